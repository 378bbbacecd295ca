{#-
  An order's category (models/intermediate/int_orders_categorized.sql): the category of
  its item with the largest quantity * unit_price; ties go to the smallest category name
  in byte order; a missing product or a NULL/blank category is 'uncategorized'; an order
  with no items is 'uncategorized'. One row per row of `orders` (order_id, category,
  item_count).

  `restrict_items`: rank only the items of `orders`, not all items. fct_orders passes its
  incremental slice (the orders of the business days it restates) so that a nightly build
  ranks the items of those orders instead of every item ever sold; the full model ranks all
  items (no semi-join needed).
-#}
{% macro order_categories(orders, order_items, products, restrict_items=false) -%}
with

orders as (
    select order_id from {{ orders }}
),

order_items as (
    select order_id, product_id, quantity, unit_price from {{ order_items }}
    {%- if restrict_items %}
    where order_id in (select order_id from orders)
    {%- endif %}
),

products as (
    select product_id, category from {{ products }}
),

order_items_categorized as (
    select
        order_items.order_id,
        order_items.quantity * order_items.unit_price as line_amount,
        {{ nightshift.coalesce_blank('products.category', 'uncategorized') }} as category
    from order_items
    left join products
        on order_items.product_id = products.product_id
),

order_items_ranked as (
    select
        order_id,
        category,
        row_number() over (
            partition by order_id
            order by line_amount desc nulls last, {{ nightshift.bytewise('category') }} asc
        ) as category_rank
    from order_items_categorized
),

item_counts as (
    select order_id, count(*) as item_count
    from order_items
    group by order_id
),

final as (
    select
        orders.order_id,
        coalesce(order_items_ranked.category, 'uncategorized') as category,
        coalesce(item_counts.item_count, 0) as item_count
    from orders
    left join order_items_ranked
        on orders.order_id = order_items_ranked.order_id
        and order_items_ranked.category_rank = 1
    left join item_counts
        on orders.order_id = item_counts.order_id
)

select * from final
{%- endmacro %}
