{#-
  USD cents of `total` (in a currency) at `rate` (units of that currency per 1 USD),
  rounded half-up, with integer arithmetic only (docs/interfaces.md):
    usd_cents = floor((2 * total_cents * 10^18 + R) / (2 * R)),
    total_cents = total * 100, R = rate * 10^18.
  NULL when the rate is NULL.
-#}
{% macro usd_cents_half_up(total, rate) -%}
    {{ return(adapter.dispatch('usd_cents_half_up', 'nightshift')(total, rate)) }}
{%- endmacro %}

{#- DuckDB: DECIMAL / DECIMAL is DOUBLE, so work in HUGEINT. A DECIMAL(38,18) prints all
    18 decimals, so dropping the point gives rate * 10^18 exactly. -#}
{% macro duckdb__usd_cents_half_up(total, rate) -%}
    cast(
        (
            2 * cast(round({{ total }} * 100) as hugeint) * cast(1000000000000000000 as hugeint)
            + cast(replace(cast(cast({{ rate }} as decimal(38, 18)) as varchar), '.', '') as hugeint)
        ) // (
            2 * cast(replace(cast(cast({{ rate }} as decimal(38, 18)) as varchar), '.', '') as hugeint)
        )
    as bigint)
{%- endmacro %}

{% macro postgres__usd_cents_half_up(total, rate) -%}
    cast(
        div(
            2 * round(cast({{ total }} as numeric) * 100) * 1000000000000000000
            + round(cast({{ rate }} as numeric) * 1000000000000000000),
            2 * round(cast({{ rate }} as numeric) * 1000000000000000000)
        )
    as bigint)
{%- endmacro %}

{#- Snowflake: the default's arithmetic on whole numbers held as NUMBER(38, 1), R taken
    as floor(rate) * 10^18 + round(fraction * 10^18): the same exact value on Snowflake.
    Written so because DuckDB under fakesnow 0.12.1 (the emulated test) keeps a
    multiplication's scale 18 and overflows DECIMAL(38) on rate * 10^18 for a rate >= 100
    (JPY), and turns NUMBER(38, 0) into BIGINT, which overflows on cents * 10^18. -#}
{% macro snowflake__usd_cents_half_up(total, rate) -%}
    {%- set e18 -%}cast(1000000000000000000 as decimal(38, 1)){%- endset -%}
    {%- set r -%}cast({{ rate }} as decimal(38, 18)){%- endset -%}
    {%- set big_r -%}
        (cast(floor({{ r }}) as decimal(38, 1)) * {{ e18 }}
         + cast(round(({{ r }} - floor({{ r }})) * 1000000000000000000) as decimal(38, 1)))
    {%- endset -%}
    {%- set num -%}
        (2 * cast(round(cast({{ total }} as decimal(38, 18)) * 100) as decimal(38, 1)) * {{ e18 }}
         + {{ big_r }})
    {%- endset -%}
    {%- set den -%}(2 * {{ big_r }}){%- endset -%}
    cast(
        trunc({{ num }} / {{ den }})
        - case when trunc({{ num }} / {{ den }}) * {{ den }} > {{ num }} then 1 else 0 end
    as bigint)
{%- endmacro %}

{#- Other warehouses: exact decimal division, truncated, then corrected to the floor
    in case the engine rounded the quotient up. -#}
{% macro default__usd_cents_half_up(total, rate) -%}
    {%- set num -%}
        (2 * round(cast({{ total }} as {{ nightshift.type_big_decimal() }}) * 100) * 1000000000000000000
         + round(cast({{ rate }} as {{ nightshift.type_big_decimal() }}) * 1000000000000000000))
    {%- endset -%}
    {%- set den -%}
        (2 * round(cast({{ rate }} as {{ nightshift.type_big_decimal() }}) * 1000000000000000000))
    {%- endset -%}
    cast(
        trunc({{ num }} / {{ den }})
        - case when trunc({{ num }} / {{ den }}) * {{ den }} > {{ num }} then 1 else 0 end
    as bigint)
{%- endmacro %}

{% macro type_big_decimal() -%}
    {{ return(adapter.dispatch('type_big_decimal', 'nightshift')()) }}
{%- endmacro %}

{% macro default__type_big_decimal() -%}
    decimal(38, 18)
{%- endmacro %}

{% macro bigquery__type_big_decimal() -%}
    bignumeric
{%- endmacro %}
