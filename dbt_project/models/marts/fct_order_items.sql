with

order_items as (
    select * from {{ ref('stg_order_items') }}
),

products as (
    select product_id, category from {{ ref('dim_products') }}
),

final as (
    select
        order_items.order_item_id,
        order_items.order_id,
        order_items.product_id,
        order_items.quantity,
        order_items.unit_price,
        cast(order_items.quantity * order_items.unit_price as decimal(18, 2)) as line_amount,
        coalesce(products.category, 'uncategorized') as category,
        products.product_id is not null as has_product,
        order_items.updated_at
    from order_items
    left join products
        on order_items.product_id = products.product_id
)

select * from final
