with

orders_converted as (
    select * from {{ ref('int_orders_converted') }}
),

orders_categorized as (
    select order_id, category from {{ ref('int_orders_categorized') }}
),

final as (
    select
        orders_converted.order_id,
        orders_converted.user_id,
        orders_converted.business_date,
        orders_converted.region,
        orders_categorized.category,
        orders_converted.status,
        orders_converted.currency,
        orders_converted.total,
        orders_converted.usd_cents,
        orders_converted.is_counted,
        orders_converted.created_at,
        orders_converted.updated_at
    from orders_converted
    inner join orders_categorized
        on orders_converted.order_id = orders_categorized.order_id
)

select * from final
