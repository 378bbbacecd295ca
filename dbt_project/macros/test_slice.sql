{#-
  Data tests of an incremental nightly build check only what the run changed; a full build
  (no run id, or --full-refresh) checks every row. dbt renders a test's `where` config
  when it parses the project, without the project's macros and before the run id is
  known (it reaches dbt at execution, macros/run_setting.sql), so a test names its slice
  with one of these words and get_where_subquery, dbt's hook for a test's `where`,
  puts in the SQL:
    __run_rows__          rows this run loaded: run_id = '<run id>' (staging);
    __run_orders__        the orders fct_orders re-inserted: an order the run restated
                          (ops.restated_orders) or a day it rebuilt whole (a day
                          ops.restated_days records that no restated order explains;
                          macros/restatement.sql), so the work follows the night's
                          change, not the days it touched;
    __run_order_items__   order_item_id of a raw.order_items row the run loaded;
    __run_payments__      payment_id of a raw.payments row the run loaded (the incremental
                          marts keyed on a source key re-insert exactly these rows, and
                          delete+insert on the key keeps the table unique when what it
                          inserts is);
    __full_build__        no row in an incremental build: for a model the build does not
                          read (fct_orders categorizes its restated orders itself, and its
                          tests cover the same rules on them).
  In a full build every word is `true`. Severity is unchanged: a failing row in the slice
  fails the build. Rows outside the slice were tested when they were built. A first load
  records every day with orders as restated and no order, so the first nightly build
  tests every row.
-#}
{% macro get_where_subquery(relation) -%}
    {%- set where = config.get('where') -%}
    {%- if where -%}
        {%- set filtered -%}
            (select * from {{ relation }} where {{ nightshift.expand_test_slice(where) }}) dbt_subquery
        {%- endset -%}
        {%- do return(filtered) -%}
    {%- else -%}
        {%- do return(relation) -%}
    {%- endif -%}
{%- endmacro %}

{% macro expand_test_slice(where) -%}
    {%- set slices = ['__run_rows__', '__run_orders__', '__run_order_items__',
        '__run_payments__', '__full_build__'] -%}
    {%- if nightshift.run_setting('run_id') is none or flags.FULL_REFRESH -%}
        {%- set sql = {} -%}
        {%- for slice in slices -%}
            {%- do sql.update({slice: 'true'}) -%}
        {%- endfor -%}
    {%- else -%}
        {%- set run_id = nightshift.restatement_run_id() -%}
        {%- set sql = {
            '__run_rows__': "run_id = '" ~ run_id ~ "'",
            '__run_orders__': "(order_id in (" ~ nightshift.fct_orders_orders_to_restate()
                ~ ") or business_date in (" ~ nightshift.fct_orders_recorded_days() ~ "))",
            '__run_order_items__': "order_item_id in (select id from "
                ~ source('raw', 'order_items') ~ " where _run_id = '" ~ run_id ~ "')",
            '__run_payments__': "payment_id in (select id from "
                ~ source('raw', 'payments') ~ " where _run_id = '" ~ run_id ~ "')",
            '__full_build__': 'false',
        } -%}
    {%- endif -%}
    {%- set ns = namespace(where=where) -%}
    {%- for slice in slices -%}
        {%- set ns.where = ns.where | replace(slice, sql[slice]) -%}
    {%- endfor -%}
    {{- return(ns.where) -}}
{%- endmacro %}
