{#-
  Incremental restatement of fct_orders (see models/marts/fct_orders.sql).

  With var run_id set and fct_orders already built, the model rebuilds exactly the business
  days that must change and leaves every other day as it is:
    - the days ops.restated_days records for the run (old and new days of changed orders,
      days of changed or deleted items, region and category moves: warehouse/load.py);
    - days whose FX rate changed or first arrived (the loader records no days for the API:
      fct_orders keeps the rate each order was converted at and compares);
    - days whose orders no longer fall on them in var report_tz (REPORT_TZ changed: the
      first and last created_at of every stored day are re-dated, a per-day check);
    - days missing from fct_orders (self-healing: a day deleted above is rebuilt whole).
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

{#- SELECT of the business days fct_orders must rebuild, judged against its current state `this`. -#}
{% macro fct_orders_days_to_restate(previous) -%}
    select business_date
    from {{ source('ops', 'restated_days') }}
    where run_id = '{{ nightshift.restatement_run_id() }}'
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

{#- pre-hook: delete the days to restate (same transaction as the insert that follows). -#}
{% macro fct_orders_delete_restated_days() -%}
    {%- if nightshift.nightly_is_incremental() -%}
        delete from {{ this }}
        where business_date in ({{ nightshift.fct_orders_days_to_restate(this) }})
    {%- else -%}
        select 1 as nothing_to_delete
    {%- endif -%}
{%- endmacro %}

{#- Pre-hook of the incremental marts keyed on a source key (fct_order_items, fct_payments):
    an incremental build deletes the rows whose key is gone from `staging` (deleted at
    the source); the rest is delete+insert on the key. Written as `in (… except …)`, not
    `not in (select …)`: PostgreSQL runs `not in` as a hashed subplan only when the whole
    key list fits in work_mem (4MB by default), else row by row against the list
    (quadratic: an incremental night at 1M orders never finished); `except` and `in` are
    hash or sort operations that spill to disk, on every engine. Keys are never NULL
    (tested), so both forms delete the same rows. -#}
{% macro delete_gone(key, staging) -%}
    {%- if nightshift.nightly_is_incremental() -%}
        delete from {{ this }}
        where {{ key }} in (
            select {{ key }} from {{ this }}
            except
            select {{ key }} from {{ staging }}
        )
    {%- else -%}
        select 1 as nothing_to_delete
    {%- endif -%}
{%- endmacro %}
