{#-
  Custom incremental strategy `delete_stale+insert` (dbt looks it up as
  get_incremental_delete_stale_insert_sql): dbt's delete+insert on `unique_key`, preceded
  by deletes of the rows the model declares stale, all in the materialization's one
  "main" statement, so in one transaction with the insert. It runs after the model's
  SELECT has filled the temp table: a SELECT that reads `{{ this }}` sees the rows these
  deletes are about to remove (fct_orders accounts for them).

  A model names its stale rows in its config:
      meta={'stale_rows': '<macro>'}
  <macro>(target) returns a list of SQL conditions on the target's rows; each is deleted
  by its own statement (an `or` of `in (subquery)` cannot become a semi-join on
  PostgreSQL). The conditions read var run_id (macros/restatement.sql): without it
  nothing stale is deleted (a build without run_id rebuilds these marts in full: their
  `full_refresh` config).
-#}
{% macro get_incremental_delete_stale_insert_sql(arg_dict) -%}
    {{ return(adapter.dispatch('delete_stale_insert_sql', 'nightshift')(arg_dict)) }}
{%- endmacro %}

{#- `delete … where <condition>;` for each stale-row condition the model declares. -#}
{% macro delete_stale_rows_sql(target) -%}
    {%- set stale_rows = config.meta_require('stale_rows') -%}
    {%- if nightshift.run_setting('run_id') is not none -%}
        {%- for condition in context[stale_rows](target) %}
    delete from {{ target }}
    where {{ condition }};
        {%- endfor %}
    {%- endif %}
{%- endmacro %}

{% macro default__delete_stale_insert_sql(arg_dict) -%}
    {{ nightshift.delete_stale_rows_sql(arg_dict['target_relation']) }}
    {{ get_delete_insert_merge_sql(
        arg_dict['target_relation'], arg_dict['temp_relation'], arg_dict['unique_key'],
        arg_dict['dest_columns'], arg_dict['incremental_predicates']
    ) }}
{%- endmacro %}

{#- Snowflake autocommits each statement, and dbt-snowflake wraps its delete+insert in
    begin … commit: the stale deletes go inside that transaction. -#}
{% macro snowflake__delete_stale_insert_sql(arg_dict) -%}
    {%- set dml -%}
        {{ nightshift.delete_stale_rows_sql(arg_dict['target_relation']) }}
        {{ default__get_delete_insert_merge_sql(
            arg_dict['target_relation'], arg_dict['temp_relation'], arg_dict['unique_key'],
            arg_dict['dest_columns'], arg_dict['incremental_predicates']
        ) }}
    {%- endset -%}
    {{ return(snowflake_dml_explicit_transaction(dml)) }}
{%- endmacro %}
