with

payments as (
    select * from {{ ref('stg_payments') }}
),

final as (
    select
        payment_id,
        order_id,
        amount,
        currency,
        status,
        payment_method,
        created_at,
        updated_at
    from payments
)

select * from final
