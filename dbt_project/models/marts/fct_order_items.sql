{#- One row per order item, with its product's current category ('uncategorized' when the
    product is missing). Incremental: with var run_id and the table built, only the items
    that can have changed are rebuilt (delete+insert on order_item_id): the items the run
    loaded, and the stored items of the products the run loaded or deleted whose category
    or has_product no longer match (a category change, a product arriving or leaving);
    the incremental strategy delete_stale+insert (macros/delete_stale_insert.sql) also
    deletes the items the run deleted at the source (fct_order_items_stale_rows). Without
    run_id, on --full-refresh, or when the table does not exist it is rebuilt in full. -#}
{{
    config(
        materialized='incremental',
        incremental_strategy='delete_stale+insert',
        unique_key='order_item_id',
        meta={'stale_rows': 'fct_order_items_stale_rows'},
        on_schema_change='fail',
        full_refresh=(none if nightshift.nightly_run() else true),
    )
}}
-- depends_on: {{ source('ops', 'deleted_rows') }}, {{ ref('stg_products') }}
{#- The keys to rebuild are one set, joined once: `run_id = … or key in (subquery)`
    cannot become a join on PostgreSQL and runs the subquery once per row. #}
with
{% if nightshift.nightly_is_incremental() %}
{%- set deleted_rows = nightshift.ops_relation('deleted_rows') %}
{%- if deleted_rows is not none %}
run_products as (
    select product_id from {{ ref('stg_products') }}
    where run_id = '{{ nightshift.restatement_run_id() }}'
    union
    {{ nightshift.run_deleted_keys('products', 'bigint') | indent(4) }}
),
{% endif %}
changed_keys as (
    select order_item_id from {{ ref('stg_order_items') }}
    where run_id = '{{ nightshift.restatement_run_id() }}'
    union
    select stored.order_item_id
    from {{ this }} as stored
    {%- if deleted_rows is not none %}
    inner join run_products
        on stored.product_id = run_products.product_id
    {%- endif %}
    left join {{ ref('dim_products') }} as current_products
        on stored.product_id = current_products.product_id
    where stored.has_product <> (current_products.product_id is not null)
        or stored.category
            <> coalesce(current_products.category, 'uncategorized')
),
{% endif %}
order_items as (
    select * from {{ ref('stg_order_items') }}
    {%- if nightshift.nightly_is_incremental() %}
    where order_item_id in (select order_item_id from changed_keys)
    {%- endif %}
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
        cast(
            order_items.quantity * order_items.unit_price
            as {{ nightshift.nightshift_decimal(18, 2) }}
        ) as line_amount,
        cast(coalesce(products.category, 'uncategorized') as {{ nightshift.type_varchar() }})
            as category,
        products.product_id is not null as has_product,
        order_items.updated_at
    from order_items
    left join products
        on order_items.product_id = products.product_id
)

select * from final
