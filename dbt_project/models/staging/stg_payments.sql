with

source as (
    select * from {{ source('raw', 'payments') }}
),

renamed as (
    select
        id as payment_id,
        cast(order_id as bigint) as order_id,
        cast(amount as {{ nightshift.nightshift_decimal(18, 2) }}) as amount,
        currency,
        status,
        method as payment_method,
        cast(created_at as {{ nightshift.type_timestamptz() }}) as created_at,
        cast(updated_at as {{ nightshift.type_timestamptz() }}) as updated_at,
        _run_id as run_id,
        _loaded_at as loaded_at
    from source
)

select * from renamed
