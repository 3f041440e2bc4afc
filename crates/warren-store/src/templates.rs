//! Templates: a recipe, its hash, its state and the snapshot its build made.

use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use warren_api::{CreateTemplateRequest, Template, TemplateState};

use crate::{parse_timestamp, query_error, timestamp_text, Store, StoreError};

/// A template as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateRecord {
    /// Unique name.
    pub name: String,
    /// The recipe it was (or is being) built from.
    pub recipe: CreateTemplateRequest,
    /// sha256 hex of the canonical recipe.
    pub recipe_hash: String,
    /// Where it is.
    pub state: TemplateState,
    /// The snapshot sandboxes fork from, once ready.
    pub snapshot_id: Option<String>,
    /// Why the build failed.
    pub failure_reason: Option<String>,
    /// When it was first created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl TemplateRecord {
    /// The API view of this record.
    pub fn to_api(&self) -> Template {
        Template {
            name: self.name.clone(),
            recipe: self.recipe.clone(),
            recipe_hash: self.recipe_hash.clone(),
            state: self.state,
            snapshot: self.snapshot_id.clone(),
            failure_reason: self.failure_reason.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// The lowercase name of a template state, as stored.
fn state_text(state: TemplateState) -> &'static str {
    match state {
        TemplateState::Building => "building",
        TemplateState::Ready => "ready",
        TemplateState::Failed => "failed",
    }
}

fn parse_state(name: &str, text: &str) -> Result<TemplateState, StoreError> {
    match text {
        "building" => Ok(TemplateState::Building),
        "ready" => Ok(TemplateState::Ready),
        "failed" => Ok(TemplateState::Failed),
        other => Err(StoreError::Corrupt {
            id: name.to_owned(),
            field: "state",
            message: format!("unknown template state {other:?}"),
        }),
    }
}

const TEMPLATE_COLUMNS: &str =
    "name, recipe, recipe_hash, state, snapshot_id, failure_reason, created_at, updated_at";

fn decode_template(row: &SqliteRow) -> Result<TemplateRecord, StoreError> {
    let get = |column: &'static str| -> Result<String, StoreError> {
        row.try_get(column).map_err(query_error("decode template"))
    };
    let get_opt = |column: &'static str| -> Result<Option<String>, StoreError> {
        row.try_get(column).map_err(query_error("decode template"))
    };
    let name = get("name")?;
    let recipe = serde_json::from_str(&get("recipe")?).map_err(|e| StoreError::Corrupt {
        id: name.clone(),
        field: "recipe",
        message: e.to_string(),
    })?;
    Ok(TemplateRecord {
        recipe,
        recipe_hash: get("recipe_hash")?,
        state: parse_state(&name, &get("state")?)?,
        snapshot_id: get_opt("snapshot_id")?,
        failure_reason: get_opt("failure_reason")?,
        created_at: parse_timestamp(&name, "created_at", &get("created_at")?)?,
        updated_at: parse_timestamp(&name, "updated_at", &get("updated_at")?)?,
        name,
    })
}

impl Store {
    /// Inserts the template or replaces the stored one of the same name
    /// (its `created_at` is kept).
    pub async fn put_template(&self, rec: &TemplateRecord) -> Result<(), StoreError> {
        let recipe = serde_json::to_string(&rec.recipe).map_err(|e| StoreError::Corrupt {
            id: rec.name.clone(),
            field: "recipe",
            message: e.to_string(),
        })?;
        let sql = format!(
            "INSERT INTO templates ({TEMPLATE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (name) DO UPDATE SET recipe = excluded.recipe, \
             recipe_hash = excluded.recipe_hash, state = excluded.state, \
             snapshot_id = excluded.snapshot_id, failure_reason = excluded.failure_reason, \
             updated_at = excluded.updated_at"
        );
        sqlx::query(&sql)
            .bind(&rec.name)
            .bind(recipe)
            .bind(&rec.recipe_hash)
            .bind(state_text(rec.state))
            .bind(&rec.snapshot_id)
            .bind(&rec.failure_reason)
            .bind(timestamp_text(rec.created_at))
            .bind(timestamp_text(rec.updated_at))
            .execute(&self.pool)
            .await
            .map_err(query_error("put template"))?;
        Ok(())
    }

    /// The template with this name, if any.
    pub async fn get_template(&self, name: &str) -> Result<Option<TemplateRecord>, StoreError> {
        let sql = format!("SELECT {TEMPLATE_COLUMNS} FROM templates WHERE name = $1");
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("get template"))?;
        row.as_ref().map(decode_template).transpose()
    }

    /// All templates by name.
    pub async fn list_templates(&self) -> Result<Vec<TemplateRecord>, StoreError> {
        let sql = format!("SELECT {TEMPLATE_COLUMNS} FROM templates ORDER BY name");
        let rows = sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("list templates"))?;
        rows.iter().map(decode_template).collect()
    }

    /// Removes the template; `false` when there was none.
    pub async fn delete_template(&self, name: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM templates WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(query_error("delete template"))?;
        Ok(result.rows_affected() > 0)
    }
}
