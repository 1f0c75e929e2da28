//! One PostgreSQL server: create, start, stop, clean up.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use crate::install::{find_bindir, Bindir};
use crate::{TestCerts, TestkitError};

/// Settings every server gets: logical decoding for CDC, room for slots and
/// WAL senders of several tests, loopback only.
const BASE_SETTINGS: &[(&str, &str)] = &[
    ("listen_addresses", "'127.0.0.1'"),
    ("unix_socket_directories", "''"),
    ("wal_level", "logical"),
    ("max_replication_slots", "32"),
    ("max_wal_senders", "32"),
    ("max_connections", "200"),
    ("max_worker_processes", "16"),
    ("max_logical_replication_workers", "8"),
    ("log_min_messages", "warning"),
    ("log_line_prefix", "'%m [%p] %q%u@%d '"),
];

/// Durability a throwaway server does not need; never set for `dev up`.
const TEST_ONLY_SETTINGS: &[(&str, &str)] = &[
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("shared_buffers", "32MB"),
];

/// The superuser every server is created with.
pub const SUPERUSER: &str = "postgres";

/// How to create a server.
#[derive(Clone, Debug, Default)]
pub struct PgServerBuilder {
    data_dir: Option<PathBuf>,
    port: Option<u16>,
    password: Option<String>,
    persistent: bool,
    settings: Vec<(String, String)>,
    tls: Option<TestCerts>,
    hba: Option<String>,
}

/// A running PostgreSQL server.
#[derive(Debug)]
pub struct PgServer {
    bindir: Bindir,
    /// The directory holding `data/` and `server.log`.
    root: PathBuf,
    port: u16,
    password: Option<String>,
    persistent: bool,
    watcher: Option<Child>,
    stopped: bool,
}

impl PgServerBuilder {
    /// Keep the server under `dir` (created when missing, reused when it
    /// already holds a server).
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Listen on this port instead of a free one.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Require SCRAM password authentication over TCP for the superuser.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Keep running and keep the directory after the handle drops, with
    /// production durability settings. For the local fleet.
    pub fn persistent(mut self) -> Self {
        self.persistent = true;
        self
    }

    /// `ssl = on` with the certificates' server chain and key, and their
    /// CA for client certificates.
    pub fn tls(mut self, certs: &TestCerts) -> Self {
        self.tls = Some(certs.clone());
        self
    }

    /// The whole `pg_hba.conf` instead of the default (trust everyone).
    pub fn hba(mut self, text: &str) -> Self {
        self.hba = Some(text.to_string());
        self
    }

    /// An extra `postgresql.conf` line.
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    pub fn start(self) -> Result<PgServer, TestkitError> {
        let bindir = find_bindir()?;
        let owner = ServerOwner::current()?;
        let root = match &self.data_dir {
            Some(d) => d.clone(),
            None => std::env::temp_dir().join(format!(
                "shardline-pg-{}-{}",
                std::process::id(),
                NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            )),
        };
        let data = root.join("data");
        let fresh = !data.join("PG_VERSION").exists();
        if fresh {
            std::fs::create_dir_all(&root)
                .map_err(TestkitError::io(format!("creating {}", root.display())))?;
            owner.chown(&root)?;
            owner.check_reachable(&root)?;
            if self.password.is_some() || self.persistent {
                init_cluster(&bindir, &owner, &root, &data, self.password.as_deref())?;
            } else {
                copy_template(&bindir, &owner, &data)?;
            }
            let mut conf = String::from("\n# written by shardline\n");
            let settings = BASE_SETTINGS
                .iter()
                .chain(if self.persistent {
                    &[][..]
                } else {
                    TEST_ONLY_SETTINGS
                })
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .chain(self.settings.iter().cloned());
            for (k, v) in settings {
                conf.push_str(&format!("{k} = {v}\n"));
            }
            if let Some(certs) = &self.tls {
                conf.push_str(&install_certs(&owner, &root, certs)?);
            }
            append(&data.join("postgresql.conf"), &conf)?;
            if let Some(hba) = &self.hba {
                let file = data.join("pg_hba.conf");
                std::fs::write(&file, hba)
                    .map_err(TestkitError::io(format!("writing {}", file.display())))?;
                owner.chown(&file)?;
            }
        }
        let mut server = PgServer {
            bindir,
            root,
            port: 0,
            password: self.password,
            persistent: self.persistent,
            watcher: None,
            stopped: false,
        };
        if !server.persistent {
            server.watcher = Some(spawn_watcher(&server.bindir, &owner, &server.root)?);
        }
        // A free port found now may be taken before the server binds it;
        // try a few when the port was ours to choose.
        let attempts = if self.port.is_some() { 1 } else { 5 };
        let mut last = None;
        for _ in 0..attempts {
            let port = match self.port {
                Some(p) => p,
                None => free_port()?,
            };
            match server.pg_ctl_start(&owner, port) {
                Ok(()) => {
                    server.port = port;
                    return Ok(server);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(TestkitError::PostgresNotFound))
    }
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl PgServer {
    /// Starts a throwaway server with test settings on a free port.
    pub fn start() -> Result<Self, TestkitError> {
        Self::builder().start()
    }

    pub fn builder() -> PgServerBuilder {
        PgServerBuilder::default()
    }

    /// A handle on a persistent server kept under `dir`, running or not,
    /// without starting it.
    pub fn attach(dir: &Path, port: u16) -> Result<Self, TestkitError> {
        Ok(PgServer {
            bindir: find_bindir()?,
            root: dir.to_path_buf(),
            port,
            password: None,
            persistent: true,
            watcher: None,
            stopped: false,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        &self.root
    }

    pub fn bindir(&self) -> &Bindir {
        &self.bindir
    }

    /// A URL for `dbname` as the superuser, with the password if one is set.
    pub fn url(&self, dbname: &str) -> String {
        match &self.password {
            Some(pw) => format!(
                "postgres://{SUPERUSER}:{pw}@127.0.0.1:{}/{dbname}",
                self.port
            ),
            None => format!("postgres://{SUPERUSER}@127.0.0.1:{}/{dbname}", self.port),
        }
    }

    /// Runs SQL with psql (ON_ERROR_STOP) and returns its unaligned output.
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String, TestkitError> {
        self.run_psql(dbname, &["-c", sql])
    }

    /// Runs a SQL file with psql in one transaction.
    pub fn psql_file(&self, dbname: &str, file: &Path) -> Result<String, TestkitError> {
        let file = file.display().to_string();
        self.run_psql(dbname, &["--single-transaction", "-f", &file])
    }

    fn run_psql(&self, dbname: &str, args: &[&str]) -> Result<String, TestkitError> {
        let mut cmd = Command::new(self.bindir.program("psql"));
        cmd.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            SUPERUSER,
            "-d",
            dbname,
        ])
        .arg("-p")
        .arg(self.port.to_string())
        .args(args)
        .env_remove("PGSERVICE");
        match &self.password {
            Some(pw) => cmd.env("PGPASSWORD", pw),
            None => cmd.env_remove("PGPASSWORD"),
        };
        run(cmd, "psql")
    }

    /// Creates a database unless it exists.
    pub fn create_database(&self, dbname: &str) -> Result<(), TestkitError> {
        let exists = self.psql(
            "postgres",
            &format!(
                "SELECT 1 FROM pg_database WHERE datname = '{}'",
                dbname.replace('\'', "''")
            ),
        )?;
        if exists.trim().is_empty() {
            self.psql(
                "postgres",
                &format!("CREATE DATABASE \"{}\"", dbname.replace('"', "\"\"")),
            )?;
        }
        Ok(())
    }

    /// Whether the server answers (pg_ctl status).
    pub fn is_running(&self) -> bool {
        is_running(&self.bindir, &self.root.join("data"))
    }

    /// Stops the server now (fast shutdown); the directory stays unless the
    /// handle is a throwaway one, which removes it on drop.
    pub fn stop(&mut self) -> Result<(), TestkitError> {
        if !self.stopped {
            let owner = ServerOwner::current()?;
            let mut cmd = owner.command(self.bindir.program("pg_ctl"));
            cmd.arg("-D")
                .arg(self.root.join("data"))
                .args(["-m", "fast", "-w", "stop"]);
            run(cmd, "pg_ctl stop")?;
            self.stopped = true;
        }
        Ok(())
    }

    /// Starts a server stopped with [`PgServer::stop`] again, on its port.
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        let owner = ServerOwner::current()?;
        self.pg_ctl_start(&owner, self.port)?;
        self.stopped = false;
        Ok(())
    }

    fn pg_ctl_start(&self, owner: &ServerOwner, port: u16) -> Result<(), TestkitError> {
        let data = self.root.join("data");
        if is_running(&self.bindir, &data) {
            return Ok(());
        }
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            return Err(TestkitError::PortInUse { port });
        }
        let log = self.root.join("server.log");
        let mut cmd = owner.command(self.bindir.program("pg_ctl"));
        cmd.arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "120", "-o"])
            .arg(format!("-p {port}"))
            .arg("start");
        run(cmd, "pg_ctl start").map_err(|e| match e {
            TestkitError::Command {
                program,
                status,
                output,
            } => {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                if tail.iter().any(|l| l.contains("could not bind")) {
                    TestkitError::PortInUse { port }
                } else {
                    TestkitError::Command {
                        program,
                        status,
                        output: format!(
                            "{output}; server log: {}",
                            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                        ),
                    }
                }
            }
            other => other,
        })?;
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.persistent {
            return;
        }
        if let Ok(owner) = ServerOwner::current() {
            let mut cmd = owner.command(self.bindir.program("pg_ctl"));
            cmd.arg("-D")
                .arg(self.root.join("data"))
                .args(["-m", "immediate", "-w", "stop"]);
            let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
        if let Some(mut watcher) = self.watcher.take() {
            let _ = watcher.kill();
            let _ = watcher.wait();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The OS user servers run as: this process's user, or `postgres` when this
/// process is root.
struct ServerOwner {
    ids: Option<(u32, u32)>,
}

impl ServerOwner {
    fn current() -> Result<Self, TestkitError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(Self { ids: None });
        }
        let name = std::ffi::CString::new(SUPERUSER).expect("no NUL in a constant");
        // SAFETY: getpwnam takes a NUL-terminated string and returns NULL or
        // a pointer to static storage, read at once.
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        if pw.is_null() {
            return Err(TestkitError::NoPostgresUser);
        }
        // SAFETY: pw is non-null and points at a valid passwd record.
        let ids = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        Ok(Self { ids: Some(ids) })
    }

    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        if let Some((uid, gid)) = self.ids {
            cmd.uid(uid).gid(gid).env("HOME", "/tmp");
        }
        // The server's own programs must not pick up a caller's PG* settings.
        for var in [
            "PGDATA",
            "PGPORT",
            "PGHOST",
            "PGUSER",
            "PGDATABASE",
            "PGPASSWORD",
        ] {
            cmd.env_remove(var);
        }
        cmd.current_dir("/");
        cmd
    }

    /// The server's owner must be able to enter and write `dir`; a parent
    /// directory closed to others (a 0700 home or temporary directory) stops
    /// it long before initdb would say why.
    fn check_reachable(&self, dir: &Path) -> Result<(), TestkitError> {
        if self.ids.is_none() {
            return Ok(());
        }
        let reachable = self
            .command("test")
            .arg("-w")
            .arg(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if reachable {
            Ok(())
        } else {
            Err(TestkitError::Unreachable {
                dir: dir.to_path_buf(),
            })
        }
    }

    fn chown(&self, path: &Path) -> Result<(), TestkitError> {
        if let Some((uid, gid)) = self.ids {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(TestkitError::io(format!("chown {}", path.display())))?;
        }
        Ok(())
    }
}

fn init_cluster(
    bindir: &Bindir,
    owner: &ServerOwner,
    root: &Path,
    data: &Path,
    password: Option<&str>,
) -> Result<(), TestkitError> {
    let mut cmd = owner.command(bindir.program("initdb"));
    cmd.arg("-D").arg(data).args([
        "-U",
        SUPERUSER,
        "-E",
        "UTF8",
        "--locale=C.UTF-8",
        "--no-instructions",
    ]);
    let pwfile = root.join("pwfile");
    if let Some(pw) = password {
        std::fs::write(&pwfile, pw).map_err(TestkitError::io("writing the password file"))?;
        owner.chown(&pwfile)?;
        cmd.arg("--auth-local=trust")
            .arg("--auth-host=scram-sha-256")
            .arg(format!("--pwfile={}", pwfile.display()));
    } else {
        cmd.arg("--auth=trust");
    }
    let result = run(cmd, "initdb");
    let _ = std::fs::remove_file(&pwfile);
    result.map(drop)
}

/// initdb takes seconds; do it once per process and copy the result.
fn copy_template(bindir: &Bindir, owner: &ServerOwner, data: &Path) -> Result<(), TestkitError> {
    static TEMPLATE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let template = TEMPLATE.get_or_init(|| {
        let root =
            std::env::temp_dir().join(format!("shardline-pg-template-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let build = || -> Result<PathBuf, TestkitError> {
            std::fs::create_dir_all(&root)
                .map_err(TestkitError::io("creating the template directory"))?;
            owner.chown(&root)?;
            init_cluster(bindir, owner, &root, &root.join("data"), None)?;
            spawn_watcher(bindir, owner, &root).map(std::mem::forget)?;
            Ok(root.join("data"))
        };
        build().map_err(|e| e.to_string())
    });
    let template = template.as_ref().map_err(|e| TestkitError::Command {
        program: "initdb".into(),
        status: "failed".into(),
        output: e.clone(),
    })?;
    let mut cmd = owner.command("cp");
    cmd.arg("-a").arg(template).arg(data);
    run(cmd, "cp").map(drop)
}

/// A process that outlives a killed test process just long enough to stop
/// its server and remove the directory.
fn spawn_watcher(bindir: &Bindir, owner: &ServerOwner, root: &Path) -> Result<Child, TestkitError> {
    let script = r#"while [ -d "/proc/$1" ]; do sleep 0.5; done
if [ -f "$3/data/postmaster.pid" ]; then "$2/pg_ctl" -D "$3/data" -m immediate -w stop >/dev/null 2>&1; fi
rm -rf "$3""#;
    let mut cmd = owner.command("sh");
    cmd.arg("-c")
        .arg(script)
        .arg("shardline-pg-watcher")
        .arg(std::process::id().to_string())
        .arg(bindir.path())
        .arg(root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Its own process group, so a terminal's Ctrl-C reaches the test but
    // not the watcher that must clean up after it.
    cmd.process_group(0);
    cmd.spawn()
        .map_err(TestkitError::io("starting the server watcher"))
}

/// pg_ctl refuses to run as root, so it runs as the server's owner.
fn is_running(bindir: &Bindir, data: &Path) -> bool {
    let Ok(owner) = ServerOwner::current() else {
        return false;
    };
    owner
        .command(bindir.program("pg_ctl"))
        .arg("-D")
        .arg(data)
        .arg("status")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn free_port() -> Result<u16, TestkitError> {
    let listener =
        TcpListener::bind(("127.0.0.1", 0)).map_err(TestkitError::io("finding a free port"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(TestkitError::io("finding a free port"))
}

/// Copies the server's chain, key and CA into `root`, owned by the server's
/// user with the key private (PostgreSQL refuses a key others can read);
/// returns the `postgresql.conf` lines that use them.
fn install_certs(
    owner: &ServerOwner,
    root: &Path,
    certs: &TestCerts,
) -> Result<String, TestkitError> {
    use std::os::unix::fs::PermissionsExt;
    let mut lines = String::from("ssl = on\n");
    for (setting, from, name) in [
        ("ssl_cert_file", &certs.cert, "server.crt"),
        ("ssl_key_file", &certs.key, "server.key"),
        ("ssl_ca_file", &certs.ca, "root.crt"),
    ] {
        let to = root.join(name);
        std::fs::copy(from, &to)
            .map_err(TestkitError::io(format!("copying {}", from.display())))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))
            .map_err(TestkitError::io(format!("chmod {}", to.display())))?;
        owner.chown(&to)?;
        lines.push_str(&format!("{setting} = '{}'\n", to.display()));
    }
    Ok(lines)
}

fn append(path: &Path, text: &str) -> Result<(), TestkitError> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(TestkitError::io(format!("opening {}", path.display())))?;
    f.write_all(text.as_bytes())
        .map_err(TestkitError::io(format!("writing {}", path.display())))
}

fn run(mut cmd: Command, program: &str) -> Result<String, TestkitError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(TestkitError::io(format!("running {program}")))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let mut output = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if output.is_empty() {
        output = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    Err(TestkitError::Command {
        program: program.into(),
        status: out.status.to_string(),
        output,
    })
}
