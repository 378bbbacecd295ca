{#-
  Data tests of an incremental nightly build check only what the run changed; a full build
  (no var run_id) checks every row. A test opts in with a placeholder in its `where`
  config (dbt's documented way to put custom logic in `where`: override get_where_subquery):
    __run_rows__                  rows this run loaded: run_id = '<var run_id>' (staging);
    __restated_days(<column>)__   <column> is one of the business days the run restated
                                  (ops.restated_days for var run_id);
    __run_keys(<column>, <table>)__
                                  <column> is the key of a row of source raw.<table> that
                                  the run loaded (_run_id): the rows an incremental mart
                                  keyed on a source key re-inserted from this run's load
                                  (fct_order_items, fct_payments; their other rows were
                                  tested when inserted, and delete+insert on the key keeps
                                  the table unique when what it inserts is);
    __full_build__                no row: for a model an incremental build does not read
                                  (int_orders_categorized: fct_orders ranks the items of
                                  its restated orders itself; its tests on the restated
                                  days cover the same order_id/category rules, and a first
                                  nightly build restates every day).
  Without var run_id, or with --full-refresh, every placeholder is `true`. Severity is
  unchanged: a failing row in the slice fails the build as before. Rows outside the slice
  were tested when they were built, and the loader merges raw by key (no old/new
  duplicates). A first load records every day with orders as restated (order_new), so
  the first nightly build, which builds fct_orders in full, tests every row.
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
    {%- set restated = source('ops', 'restated_days') -%}
    {%- if nightshift.run_setting('run_id') is none or flags.FULL_REFRESH -%}
        {%- set run_rows, restated_days, full_build = 'true', 'true', 'true' -%}
    {%- else -%}
        {%- set run_id = nightshift.restatement_run_id() -%}
        {%- set full_build = 'false' -%}
        {%- set run_rows = "run_id = '" ~ run_id ~ "'" -%}
        {%- set restated_days = "\\1 in (select business_date from " ~ restated
            ~ " where run_id = '" ~ run_id ~ "')" -%}
    {%- endif -%}
    {%- set ns = namespace(where=where | replace('__run_rows__', run_rows)
        | replace('__full_build__', full_build)) -%}
    {%- for placeholder, column, table in modules.re.findall(
        '(__run_keys\\((\\w+), *(\\w+)\\)__)', where) -%}
        {%- set keys = 'true' if full_build == 'true' else column ~ " in (select id from "
            ~ source('raw', table) ~ " where _run_id = '" ~ run_id ~ "')" -%}
        {%- set ns.where = ns.where | replace(placeholder, keys) -%}
    {%- endfor -%}
    {{- return(modules.re.sub('__restated_days\\((\\w+)\\)__', restated_days, ns.where)) -}}
{%- endmacro %}
