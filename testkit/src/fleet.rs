//! A local fleet: several named persistent servers under one directory.
//!
//! `shardline dev up` describes the servers it wants (name, database, port
//! offset) and [`Fleet::up`] makes them exist and run: it creates what is
//! missing, starts what is stopped and reuses what runs. The fleet records
//! itself in `DIR/fleet.list` so `status` and `down` need no guessing.
//! Before creating anything it checks every port it would need, and when a
//! first `up` fails half-way it removes what it made.

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use crate::server::PgServer;
use crate::TestkitError;

const RECORD: &str = "fleet.list";

/// One server the fleet should have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberSpec {
    pub name: String,
    /// The database created on it.
    pub database: String,
}

/// One server of a fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub database: String,
    pub port: u16,
}

/// What `status` reports of a member.
#[derive(Clone, Debug)]
pub struct MemberStatus {
    pub member: Member,
    pub running: bool,
    /// Size of the member's database in bytes, when running.
    pub size_bytes: Option<u64>,
}

#[derive(Debug)]
pub struct Fleet {
    pub dir: PathBuf,
    pub members: Vec<Member>,
}

impl Fleet {
    /// Makes the fleet under `dir` match `specs` and run. Ports are
    /// `base_port`, `base_port + 1`, … in spec order for a new fleet; an
    /// existing fleet keeps its recorded ports and must have the same members.
    pub fn up(dir: &Path, specs: &[MemberSpec], base_port: u16) -> Result<Fleet, TestkitError> {
        let existing = Self::load(dir)?;
        let members: Vec<Member> = match &existing {
            Some(fleet) => {
                let names: Vec<&str> = fleet.members.iter().map(|m| m.name.as_str()).collect();
                let wanted: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                if names != wanted {
                    return Err(TestkitError::FleetMismatch {
                        dir: dir.to_path_buf(),
                        have: names.join(", "),
                        want: wanted.join(", "),
                    });
                }
                fleet.members.clone()
            }
            None => specs
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let port = base_port
                        .checked_add(i as u16)
                        .ok_or(TestkitError::PortInUse { port: u16::MAX })?;
                    Ok(Member {
                        name: s.name.clone(),
                        database: s.database.clone(),
                        port,
                    })
                })
                .collect::<Result<_, TestkitError>>()?,
        };
        // Every port a stopped member needs must be free before anything
        // is created or started.
        for m in &members {
            let handle = PgServer::attach(&dir.join(&m.name), m.port)?;
            if !handle.is_running() && TcpListener::bind(("127.0.0.1", m.port)).is_err() {
                return Err(TestkitError::PortInUse { port: m.port });
            }
        }
        let fleet = Fleet {
            dir: dir.to_path_buf(),
            members,
        };
        let fresh = existing.is_none();
        match fleet.start_all() {
            Ok(()) => {
                fleet.save()?;
                Ok(fleet)
            }
            Err(e) => {
                if fresh {
                    let _ = fleet.down(true);
                }
                Err(e)
            }
        }
    }

    fn start_all(&self) -> Result<(), TestkitError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(TestkitError::io(format!("creating {}", self.dir.display())))?;
        for m in &self.members {
            let server = PgServer::builder()
                .dir(self.dir.join(&m.name))
                .port(m.port)
                .persistent()
                .start()?;
            server.create_database(&m.database)?;
        }
        Ok(())
    }

    /// The fleet recorded under `dir`, if any.
    pub fn load(dir: &Path) -> Result<Option<Fleet>, TestkitError> {
        let path = dir.join(RECORD);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(TestkitError::io(format!("reading {}", path.display()))(e)),
        };
        let members = parse_record(&text).ok_or_else(|| TestkitError::Command {
            program: "fleet".into(),
            status: "unreadable".into(),
            output: format!("{} is not a fleet record", path.display()),
        })?;
        Ok(Some(Fleet {
            dir: dir.to_path_buf(),
            members,
        }))
    }

    /// A handle on a member's server, to run psql against it.
    pub fn server(&self, name: &str) -> Result<PgServer, TestkitError> {
        let m = self
            .members
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| TestkitError::Command {
                program: "fleet".into(),
                status: "unknown member".into(),
                output: name.to_string(),
            })?;
        PgServer::attach(&self.dir.join(&m.name), m.port)
    }

    pub fn status(&self) -> Result<Vec<MemberStatus>, TestkitError> {
        let mut out = Vec::new();
        for m in &self.members {
            let server = PgServer::attach(&self.dir.join(&m.name), m.port)?;
            let running = server.is_running();
            let size_bytes = if running {
                server
                    .psql(
                        "postgres",
                        &format!(
                            "SELECT pg_database_size('{}')",
                            m.database.replace('\'', "''")
                        ),
                    )
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
            } else {
                None
            };
            out.push(MemberStatus {
                member: m.clone(),
                running,
                size_bytes,
            });
        }
        Ok(out)
    }

    /// Stops every member; `purge` also deletes the directory.
    pub fn down(&self, purge: bool) -> Result<(), TestkitError> {
        let mut first_error = None;
        for m in &self.members {
            let mut server = PgServer::attach(&self.dir.join(&m.name), m.port)?;
            if server.is_running() {
                if let Err(e) = server.stop() {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        if purge {
            std::fs::remove_dir_all(&self.dir)
                .map_err(TestkitError::io(format!("removing {}", self.dir.display())))?;
        }
        Ok(())
    }

    fn save(&self) -> Result<(), TestkitError> {
        let path = self.dir.join(RECORD);
        let tmp = self.dir.join(format!("{RECORD}.tmp"));
        std::fs::write(&tmp, render_record(&self.members))
            .map_err(TestkitError::io(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, &path)
            .map_err(TestkitError::io(format!("writing {}", path.display())))
    }
}

/// The record: one member per line, `name database port`.
fn render_record(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| format!("{} {} {}\n", m.name, m.database, m.port))
        .collect()
}

fn parse_record(text: &str) -> Option<Vec<Member>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut parts = line.split_whitespace();
            let (name, database, port) =
                (parts.next()?, parts.next()?, parts.next()?.parse().ok()?);
            Some(Member {
                name: name.to_string(),
                database: database.to_string(),
                port,
            })
        })
        .collect()
}
