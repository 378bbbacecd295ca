{#- One row per payment id. Incremental like fct_order_items: with var run_id and the table
    built, the payments the run loaded (run_id) are re-inserted and the payments the run
    deleted at the source are deleted (incremental strategy delete_stale+insert,
    macros/delete_stale_insert.sql: fct_payments_stale_rows, then delete+insert on
    payment_id); every other row is as the last build left it, and is what a full rebuild
    gives (stg_payments is one row per id, the loader's merge replaces a payment in place
    with the loading run's id). Without run_id, on --full-refresh, or when the table does
    not exist it is rebuilt in full. -#}
{{
    config(
        materialized='incremental',
        incremental_strategy='delete_stale+insert',
        unique_key='payment_id',
        meta={'stale_rows': 'fct_payments_stale_rows'},
        on_schema_change='fail',
        full_refresh=(none if nightshift.nightly_run() else true),
    )
}}
-- depends_on: {{ source('ops', 'deleted_rows') }}
with

payments as (
    select * from {{ ref('stg_payments') }}
    {%- if nightshift.nightly_is_incremental() %}
    where run_id = '{{ nightshift.restatement_run_id() }}'
    {%- endif %}
),

final as (
    -- explicit string types: the incremental insert must match the table's column types
    -- (PostgreSQL would otherwise give text, not the contract's varchar)
    select
        cast(payment_id as {{ nightshift.type_varchar() }}) as payment_id,
        order_id,
        amount,
        cast(currency as {{ nightshift.type_varchar() }}) as currency,
        cast(status as {{ nightshift.type_varchar() }}) as status,
        cast(payment_method as {{ nightshift.type_varchar() }}) as payment_method,
        created_at,
        updated_at
    from payments
)

select * from final
