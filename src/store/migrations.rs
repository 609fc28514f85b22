//! The schema's migrations, embedded in the binary and applied by refinery.
//!
//! The list is written out rather than found by refinery's
//! `embed_migrations!` macro: the macro is a proc-macro crate that builds
//! refinery-core a second time for the compiler, with regex, url, time and
//! walkdir (issue 20, README "Build time"). A unit test holds
//! the list and the `migrations/` folder together, so a file added there
//! without a line here fails the tests instead of being silently skipped.

use refinery_core::{Migration, Runner};

/// Every migration, oldest first: (file name without `.sql`, its SQL).
const MIGRATIONS: &[(&str, &str)] = &[
    ("V1__users", include_str!("../../migrations/V1__users.sql")),
    (
        "V2__sms_outbox",
        include_str!("../../migrations/V2__sms_outbox.sql"),
    ),
    (
        "V3__otp_codes",
        include_str!("../../migrations/V3__otp_codes.sql"),
    ),
    (
        "V4__login_flows_and_refresh_tokens",
        include_str!("../../migrations/V4__login_flows_and_refresh_tokens.sql"),
    ),
    (
        "V5__quotas_lockout_audit",
        include_str!("../../migrations/V5__quotas_lockout_audit.sql"),
    ),
    (
        "V6__login_flow_expiry_index",
        include_str!("../../migrations/V6__login_flow_expiry_index.sql"),
    ),
    (
        "V7__login_admission",
        include_str!("../../migrations/V7__login_admission.sql"),
    ),
    (
        "V8__sessions_revocation",
        include_str!("../../migrations/V8__sessions_revocation.sql"),
    ),
    (
        "V9__code_guard_regions",
        include_str!("../../migrations/V9__code_guard_regions.sql"),
    ),
    (
        "V10__signup_privacy_purge",
        include_str!("../../migrations/V10__signup_privacy_purge.sql"),
    ),
    (
        "V11__login_decoys",
        include_str!("../../migrations/V11__login_decoys.sql"),
    ),
    (
        "V12__first_login",
        include_str!("../../migrations/V12__first_login.sql"),
    ),
    (
        "V13__quota_leases",
        include_str!("../../migrations/V13__quota_leases.sql"),
    ),
    (
        "V14__session_client",
        include_str!("../../migrations/V14__session_client.sql"),
    ),
    (
        "V15__recovery_codes",
        include_str!("../../migrations/V15__recovery_codes.sql"),
    ),
    (
        "V16__phone_change_password_reset",
        include_str!("../../migrations/V16__phone_change_password_reset.sql"),
    ),
    (
        "V17__keyring",
        include_str!("../../migrations/V17__keyring.sql"),
    ),
    (
        "V18__user_locale",
        include_str!("../../migrations/V18__user_locale.sql"),
    ),
    (
        "V19__admin",
        include_str!("../../migrations/V19__admin.sql"),
    ),
    (
        "V20__admin_role",
        include_str!("../../migrations/V20__admin_role.sql"),
    ),
    (
        "V21__lock_rows",
        include_str!("../../migrations/V21__lock_rows.sql"),
    ),
];

/// A refinery runner for every migration (it applies the ones the database's
/// history table lacks, and refuses one whose applied SQL has changed).
pub fn runner() -> Result<Runner, refinery_core::Error> {
    let migrations = MIGRATIONS
        .iter()
        .map(|(name, sql)| Migration::unapplied(name, sql))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Runner::new(&migrations))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `V{n}__{name}.sql` files of `migrations/`, by version.
    fn files() -> Vec<(u32, String)> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut files: Vec<(u32, String)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter_map(|f| {
                let stem = f.strip_suffix(".sql")?.to_owned();
                let version = stem.strip_prefix('V')?.split("__").next()?.parse().ok()?;
                Some((version, stem))
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn the_list_is_the_migrations_folder_in_order() {
        let listed: Vec<&str> = MIGRATIONS.iter().map(|(name, _)| *name).collect();
        let found = files();
        let found: Vec<&str> = found.iter().map(|(_, name)| name.as_str()).collect();
        assert_eq!(listed, found, "migrations/ and MIGRATIONS differ");
        let dir = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).unwrap();
        assert_eq!(
            dir.count(),
            found.len(),
            "a file in migrations/ is not V{{n}}__name.sql"
        );
    }

    #[test]
    fn every_migration_parses_with_its_file_contents() {
        let migrations = runner().unwrap().get_migrations().clone();
        assert_eq!(migrations.len(), MIGRATIONS.len());
        for (m, (n, (name, sql))) in migrations.iter().zip(MIGRATIONS.iter().enumerate()) {
            assert_eq!(m.version(), u32::try_from(n + 1).unwrap(), "{name}");
            let path = format!("{}/migrations/{name}.sql", env!("CARGO_MANIFEST_DIR"));
            assert_eq!(m.sql(), Some(*sql));
            assert_eq!(std::fs::read_to_string(path).unwrap(), *sql);
        }
    }
}
