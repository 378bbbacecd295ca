{#- An order's category: the category of its item with the largest quantity * unit_price;
    ties go to the smallest category name in byte order; a missing product or a NULL/blank
    category is 'uncategorized'; an order with no items is 'uncategorized'. The logic is
    macros/order_categories.sql, which fct_orders also runs on the orders of the days an
    incremental nightly build restates. -#}
{{ nightshift.order_categories(ref('stg_orders'), ref('stg_order_items'), ref('stg_products')) }}
