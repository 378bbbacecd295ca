{#-
  A per-run setting (run_id, through_date): from --vars when given there, else from the
  environment (DBT_NIGHTSHIFT_RUN_ID, DBT_NIGHTSHIFT_THROUGH_DATE; empty = null).
  warehouse/dbt_runner.py passes them in the environment because a change of --vars makes
  dbt re-parse the whole project (partial parsing is dropped: "config vars ... have
  changed"), while a changed env var re-parses only the files that read it; every nightly
  run has a new run_id.
-#}
{#-
  The environment is read only when dbt executes (`execute`), never while it parses: dbt
  re-parses every file that read a changed env var at parse time, so reading them there
  would re-parse the files that read them (the incremental marts' config, sales_summary)
  every night. At parse time a setting from the environment is none;
  what the parse needs, whether the marts build incrementally, comes from `nightly_run()`.
-#}
{% macro run_setting(name) -%}
    {%- set value = var(name, none) -%}
    {%- if value is none and execute -%}
        {%- set value = env_var('DBT_NIGHTSHIFT_' ~ name | upper, '') or none -%}
    {%- endif -%}
    {{ return(value) }}
{%- endmacro %}

{#-
  A run with a run id (var run_id, or DBT_NIGHTSHIFT_NIGHTLY=1, which
  warehouse/dbt_runner.py sets whenever it passes DBT_NIGHTSHIFT_RUN_ID): the incremental
  marts' `full_refresh` config, read at parse time. Unlike the run id itself, it is the
  same every night, so it costs no re-parse.
-#}
{% macro nightly_run() -%}
    {{ return(var('run_id', none) is not none or env_var('DBT_NIGHTSHIFT_NIGHTLY', '') == '1') }}
{%- endmacro %}
