{#- History of users (SCD2) in schema `snapshots`: one row per version of a user as the
    nightly builds saw it (timestamp strategy on updated_at). dbt_valid_from/dbt_valid_to
    bound each version; dbt_valid_to is NULL for the current one. Versions that came and
    went between two nightly builds are not seen. -#}
{% snapshot users_snapshot %}
{{
    config(
        schema='snapshots',
        unique_key='user_id',
        strategy='timestamp',
        updated_at='updated_at',
    )
}}
select
    user_id,
    email,
    full_name,
    region as source_region,
    {{ nightshift.coalesce_blank('region', 'unknown') }} as region,
    created_at,
    updated_at
from {{ ref('stg_users') }}
{% endsnapshot %}
