with

products as (
    select * from {{ ref('stg_products') }}
),

final as (
    select
        product_id,
        sku,
        product_name,
        {{ nightshift.coalesce_blank('category', 'uncategorized') }} as category,
        price,
        updated_at
    from products
)

select * from final
