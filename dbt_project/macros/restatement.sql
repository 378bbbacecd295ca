{#-
  Incremental restatement of fct_orders (see models/marts/fct_orders.sql).

  With var run_id set and fct_orders already built, the model rebuilds exactly the orders
  and business days that must change and leaves every other row as it is:
    - the orders ops.restated_orders records for the run (changed and new orders, orders
      whose items changed or were deleted, region and category moves: warehouse/load.py),
      one by one: a change spread over the whole history costs its orders, not its days;
    - the days ops.restated_days records for the run that no restated order explains
      (an FX revision; a first load, which records no orders; a warehouse loaded before
      ops.restated_orders existed);
    - days whose FX rate changed or first arrived (the loader records no days for the API:
      fct_orders keeps the rate each order was converted at and compares);
    - days whose orders no longer fall on them in var report_tz (REPORT_TZ changed: the
      first and last created_at of every stored day are re-dated, a per-day check);
    - days missing from fct_orders, or left without rows once its restated orders are
      deleted (self-healing: such a day is rebuilt whole).
  The incremental strategy delete_stale+insert (macros/delete_stale_insert.sql) deletes
  the stale rows (fct_orders_stale_rows) after the model's SELECT has run, then does
  delete+insert on order_id, in one transaction.
-#}

{#- The incremental marts (fct_orders, fct_order_items, fct_payments) build incrementally:
    var run_id is set and the table exists. is_incremental() without its catalog lookup
    when var run_id is null (the table is then rebuilt in full anyway): so
    `dbt compile --no-introspect` for Snowflake/BigQuery needs no connection. -#}
{% macro nightly_is_incremental() -%}
    {{ return(nightshift.run_setting('run_id') is not none and is_incremental()) }}
{%- endmacro %}

{#- The run id as a SQL-safe literal body (same rule as warehouse/load.py run ids). -#}
{% macro restatement_run_id() -%}
    {%- set run_id = nightshift.run_setting('run_id') -%}
    {%- if run_id is none or not modules.re.match('^[A-Za-z0-9][A-Za-z0-9_.:-]*$', run_id | string) -%}
        {{ exceptions.raise_compiler_error("var run_id must be a run id like 2026-11-27, got " ~ run_id) }}
    {%- endif -%}
    {{ return(run_id | string) }}
{%- endmacro %}

{#- The reasons warehouse/load.py records for a day because of its orders (the others,
    such as 'fx rate revised', are about the whole day). -#}
{% macro order_restatement_reasons() -%}
    'order_new', 'order_changed', 'items_changed', 'item_deleted', 'user_region',
    'product_category'
{%- endmacro %}

{#- ops.<name> (restated_orders, deleted_rows), or none when the warehouse has no such
    table yet (a warehouse loaded before it existed). In a unit test's fixture (no schema)
    the relation itself. -#}
{% macro ops_relation(name) -%}
    {%- set relation = source('ops', name) -%}
    {%- if relation.schema is none -%}
        {{ return(relation) }}
    {%- endif -%}
    {{ return(load_relation(relation)) }}
{%- endmacro %}

{#- SELECT of the orders fct_orders rebuilds one by one (delete+insert on order_id). -#}
{% macro fct_orders_orders_to_restate() -%}
    {%- set restated_orders = nightshift.ops_relation('restated_orders') -%}
    {%- if restated_orders is none -%}
    select cast(null as bigint) as order_id where false
    {%- else -%}
    select order_id
    from {{ restated_orders }}
    where run_id = '{{ nightshift.restatement_run_id() }}'
    {%- endif -%}
{%- endmacro %}

{#- SELECT of the days ops.restated_days records for the run that no restated order of
    the run explains: fct_orders rebuilds them whole. -#}
{% macro fct_orders_recorded_days() -%}
    {%- set restated_orders = nightshift.ops_relation('restated_orders') -%}
    select business_date
    from {{ source('ops', 'restated_days') }} as restated
    where run_id = '{{ nightshift.restatement_run_id() }}'
    {%- if restated_orders is not none %}
        and (
            reason not in ({{ nightshift.order_restatement_reasons() }})
            or not exists (
                select 1
                from {{ restated_orders }} as restated_orders
                where restated_orders.run_id = restated.run_id
                    and restated_orders.business_date = restated.business_date
            )
        )
    {%- endif %}
{%- endmacro %}

{#- SELECT of the business days fct_orders must rebuild whole, judged against its current state `this`. -#}
{% macro fct_orders_days_to_restate(previous) -%}
    {{ nightshift.fct_orders_recorded_days() }}
    union
    select stored_days.business_date
    from (
        select
            business_date,
            currency,
            fx_rate,
            min(created_at) as first_created_at,
            max(created_at) as last_created_at
        from {{ previous }}
        group by business_date, currency, fx_rate
    ) as stored_days
    left join {{ ref('stg_fx_rates') }} as current_rates
        on stored_days.business_date = current_rates.rate_date
        and stored_days.currency = current_rates.currency
    where stored_days.fx_rate is distinct from current_rates.rate
        or {{ nightshift.business_day('stored_days.first_created_at') }} <> stored_days.business_date
        or {{ nightshift.business_day('stored_days.last_created_at') }} <> stored_days.business_date
{%- endmacro %}

{#- The rows of fct_orders that its incremental strategy (macros/delete_stale_insert.sql)
    deletes before delete+insert on order_id: the days to restate, whole (judged against
    `target` before any delete), then the orders to restate (an order whose day moved, or
    that is gone, leaves its old day; delete+insert then writes its current row). -#}
{% macro fct_orders_stale_rows(target) -%}
    {%- set days -%}
        business_date in ({{ nightshift.fct_orders_days_to_restate(target) }})
    {%- endset -%}
    {%- set orders -%}
        order_id in ({{ nightshift.fct_orders_orders_to_restate() }})
    {%- endset -%}
    {{ return([days, orders]) }}
{%- endmacro %}

{#- SELECT of the keys of raw.<table> that the run deleted at the source, as the loader
    records them (ops.deleted_rows: one row per deleted key, as text), cast to `key_type`. -#}
{% macro run_deleted_keys(table, key_type) -%}
    select cast(deleted_rows.key as {{ key_type }}) as deleted_key
    from {{ source('ops', 'deleted_rows') }} as deleted_rows
    where deleted_rows.run_id = '{{ nightshift.restatement_run_id() }}'
        and deleted_rows.table_name = '{{ table }}'
{%- endmacro %}

{#- The rows of an incremental mart keyed on a source key (fct_order_items, fct_payments)
    whose source row is gone, for its incremental strategy to delete: the keys
    ops.deleted_rows records for the run (so the work follows the night's deletes, not
    the table's size); the rest is delete+insert on the key. A warehouse without
    ops.deleted_rows falls back to comparing the whole key set of `target` with
    `staging`, written as `in (… except …)`: PostgreSQL runs `not in (select …)` row by
    row against the list once it exceeds work_mem. -#}
{% macro gone_rows(target, key, staging, table, key_type) -%}
    {%- if nightshift.ops_relation('deleted_rows') is not none -%}
        {{ key }} in ({{ nightshift.run_deleted_keys(table, key_type) }})
    {%- else -%}
        {{ key }} in (
            select {{ key }} from {{ target }}
            except
            select {{ key }} from {{ staging }}
        )
    {%- endif -%}
{%- endmacro %}

{#- Stale rows of fct_order_items: the items the run deleted at the source. -#}
{% macro fct_order_items_stale_rows(target) -%}
    {{ return([nightshift.gone_rows(
        target, 'order_item_id', ref('stg_order_items'), 'order_items', 'bigint'
    )]) }}
{%- endmacro %}

{#- Stale rows of fct_payments: the payments the run deleted at the source. -#}
{% macro fct_payments_stale_rows(target) -%}
    {{ return([nightshift.gone_rows(
        target, 'payment_id', ref('stg_payments'), 'payments', nightshift.type_varchar()
    )]) }}
{%- endmacro %}
