{#-
  A per-run setting (run_id, through_date): from --vars when given there, else from the
  environment (DBT_NIGHTSHIFT_RUN_ID, DBT_NIGHTSHIFT_THROUGH_DATE; empty = null).
  warehouse/dbt_runner.py passes them in the environment because a change of --vars makes
  dbt re-parse the whole project (partial parsing is dropped: "config vars ... have
  changed"), while a changed env var re-parses only the files that read it; every nightly
  run has a new run_id.
-#}
{% macro run_setting(name) -%}
    {%- set value = var(name, none) -%}
    {%- if value is none -%}
        {%- set value = env_var('DBT_NIGHTSHIFT_' ~ name | upper, '') or none -%}
    {%- endif -%}
    {{ return(value) }}
{%- endmacro %}
