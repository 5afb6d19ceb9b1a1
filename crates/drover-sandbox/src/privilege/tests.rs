//! Phase A's order and verification, asserted through a recording [`PrivilegeSys`].

use std::cell::RefCell;

use super::*;

/// Records every call; fails the step named in `fail_at`; answers status and setuid(0) as
/// configured.
struct RecordingSys {
    calls: RefCell<Vec<String>>,
    uid: RefCell<u32>,
    pid: u32,
    setpcap: bool,
    status: String,
    setuid_root: fn() -> io::Result<()>,
    dumpable: bool,
    fail_at: Option<&'static str>,
}

const CLEAN_STATUS: &str = "Name:\tdrover\nUid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\nNoNewPrivs:\t1\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\n";

impl RecordingSys {
    fn new(uid: u32) -> Self {
        Self {
            calls: RefCell::default(),
            uid: RefCell::new(uid),
            pid: 4242,
            setpcap: uid == 0,
            status: CLEAN_STATUS.to_owned(),
            setuid_root: || Err(io::Error::from_raw_os_error(libc::EPERM)),
            dumpable: false,
            fail_at: None,
        }
    }
    fn record(&self, call: String) -> io::Result<()> {
        let failing = self.fail_at.is_some_and(|f| call.starts_with(f));
        self.calls.borrow_mut().push(call);
        if failing { Err(io::Error::from_raw_os_error(libc::EPERM)) } else { Ok(()) }
    }
    fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }
}

impl PrivilegeSys for RecordingSys {
    fn getuid(&self) -> u32 {
        *self.uid.borrow()
    }
    fn geteuid(&self) -> u32 {
        *self.uid.borrow()
    }
    fn getpid(&self) -> u32 {
        self.pid
    }
    fn has_setpcap(&self) -> bool {
        self.setpcap
    }
    fn set_child_subreaper(&self) -> io::Result<()> {
        self.record("subreaper".into())
    }
    fn lock_securebits(&self) -> io::Result<()> {
        self.record("securebits".into())
    }
    fn clear_caps(&self, set: CapSet) -> io::Result<()> {
        self.record(format!("clear {}", set.status_key()))
    }
    fn clear_groups(&self) -> io::Result<()> {
        self.record("setgroups []".into())
    }
    fn setresgid(&self, gid: u32) -> io::Result<()> {
        self.record(format!("setresgid {gid}"))
    }
    fn setresuid(&self, uid: u32) -> io::Result<()> {
        self.record(format!("setresuid {uid}"))?;
        *self.uid.borrow_mut() = uid;
        Ok(())
    }
    fn set_no_new_privs(&self) -> io::Result<()> {
        self.record("no_new_privs".into())
    }
    fn set_non_dumpable(&self) -> io::Result<()> {
        self.record("dumpable 0".into())
    }
    fn is_dumpable(&self) -> io::Result<bool> {
        Ok(self.dumpable)
    }
    fn proc_status(&self) -> io::Result<String> {
        Ok(self.status.clone())
    }
    fn try_setuid_root(&self) -> io::Result<()> {
        self.calls.borrow_mut().push("probe setuid 0".into());
        (self.setuid_root)()
    }
}

#[test]
fn root_order_is_bounding_then_ids_then_flags_then_verify() {
    let sys = RecordingSys::new(0);
    let dropped = drop_privileges(&DropConfig { uid: 1234, gid: 5678 }, &sys).unwrap();
    assert_eq!(
        sys.calls(),
        [
            "subreaper",
            "securebits",
            "clear CapBnd",
            "clear CapAmb",
            "clear CapInh",
            "setgroups []",
            "setresgid 5678",
            "setresuid 1234",
            "clear CapPrm",
            "clear CapEff",
            "no_new_privs",
            "dumpable 0",
            "probe setuid 0",
        ]
    );
    assert_eq!((dropped.uid(), dropped.gid(), dropped.started_as_root()), (1234, 5678, true));
}

#[test]
fn non_root_clears_and_sets_flags_without_changing_ids() {
    let sys = RecordingSys::new(65532);
    let dropped = drop_privileges(&DropConfig::default(), &sys).unwrap();
    assert_eq!(
        sys.calls(),
        [
            "subreaper",
            "clear CapAmb",
            "clear CapInh",
            "clear CapPrm",
            "clear CapEff",
            "no_new_privs",
            "dumpable 0",
            "probe setuid 0",
        ]
    );
    assert_eq!((dropped.uid(), dropped.started_as_root()), (65532, false));
}

#[test]
fn pid1_does_not_ask_to_be_a_subreaper() {
    let mut sys = RecordingSys::new(65532);
    sys.pid = 1;
    let dropped = drop_privileges(&DropConfig::default(), &sys).unwrap();
    assert!(!sys.calls().contains(&"subreaper".to_owned()));
    assert!(dropped.pid1());
}

#[test]
fn a_failing_step_stops_the_drop_there() {
    let mut sys = RecordingSys::new(0);
    sys.fail_at = Some("setresgid");
    let err = drop_privileges(&DropConfig::default(), &sys).unwrap_err();
    assert!(matches!(err, PrivilegeError::Step { step: Step::Setresgid, .. }), "{err}");
    assert_eq!(sys.calls().last().unwrap(), "setresgid 65534");
    assert!(!sys.calls().iter().any(|c| c.starts_with("setresuid")));
}

#[test]
fn verification_rejects_each_nonzero_capability_set() {
    for set in CapSet::ALL {
        let mut sys = RecordingSys::new(65532);
        let key = set.status_key();
        sys.status = CLEAN_STATUS
            .replace(&format!("{key}:\t0000000000000000"), &format!("{key}:\t0000000000000400"));
        let err = drop_privileges(&DropConfig::default(), &sys).unwrap_err();
        match err {
            PrivilegeError::CapsRemain { key: k, mask } => assert_eq!((k, mask), (key, 0x400)),
            other => panic!("{key}: {other}"),
        }
    }
}

#[test]
fn bounding_set_error_explains_the_container_fix() {
    let mut sys = RecordingSys::new(65532);
    sys.status = CLEAN_STATUS.replace("CapBnd:\t0000000000000000", "CapBnd:\t000001ffffffffff");
    let err = drop_privileges(&DropConfig::default(), &sys).unwrap_err();
    assert!(err.to_string().contains("--cap-drop ALL"), "{err}");
}

#[test]
fn verification_rejects_no_new_privs_unset_root_regainable_and_dumpable() {
    let mut sys = RecordingSys::new(65532);
    sys.status = CLEAN_STATUS.replace("NoNewPrivs:\t1", "NoNewPrivs:\t0");
    assert!(matches!(
        drop_privileges(&DropConfig::default(), &sys),
        Err(PrivilegeError::NoNewPrivsUnset { found: 0 })
    ));

    let mut sys = RecordingSys::new(65532);
    sys.setuid_root = || Ok(());
    assert!(matches!(
        drop_privileges(&DropConfig::default(), &sys),
        Err(PrivilegeError::RootRegainable)
    ));

    let mut sys = RecordingSys::new(65532);
    sys.setuid_root = || Err(io::Error::from_raw_os_error(libc::EINVAL));
    assert!(matches!(
        drop_privileges(&DropConfig::default(), &sys),
        Err(PrivilegeError::SetuidProbe(_))
    ));

    let mut sys = RecordingSys::new(65532);
    sys.dumpable = true;
    assert!(matches!(
        drop_privileges(&DropConfig::default(), &sys),
        Err(PrivilegeError::StillDumpable)
    ));

    let mut sys = RecordingSys::new(65532);
    sys.status = CLEAN_STATUS.replace("CapEff:\t0000000000000000\n", "");
    assert!(matches!(
        drop_privileges(&DropConfig::default(), &sys),
        Err(PrivilegeError::StatusField { key: "CapEff" })
    ));
}

#[test]
fn root_as_a_target_and_switching_when_non_root_are_refused() {
    let sys = RecordingSys::new(0);
    assert!(matches!(
        drop_privileges(&DropConfig { uid: 0, gid: 65534 }, &sys),
        Err(PrivilegeError::TargetIsRoot)
    ));
    assert!(sys.calls().is_empty());
    let sys = RecordingSys::new(1000);
    assert!(check_requested_uid(Some(1000), &sys).is_ok());
    assert!(check_requested_uid(None, &sys).is_ok());
    assert!(matches!(
        check_requested_uid(Some(65534), &sys),
        Err(PrivilegeError::CannotSwitch { current: 1000, requested: 65534 })
    ));
}

#[test]
fn a_root_process_that_never_changes_uid_fails_verification() {
    // A broken setresuid that reports success but leaves uid 0 must not pass.
    struct Liar(RecordingSys);
    impl PrivilegeSys for Liar {
        fn getuid(&self) -> u32 {
            0
        }
        fn geteuid(&self) -> u32 {
            0
        }
        fn getpid(&self) -> u32 {
            self.0.getpid()
        }
        fn has_setpcap(&self) -> bool {
            true
        }
        fn set_child_subreaper(&self) -> io::Result<()> {
            Ok(())
        }
        fn lock_securebits(&self) -> io::Result<()> {
            Ok(())
        }
        fn clear_caps(&self, _: CapSet) -> io::Result<()> {
            Ok(())
        }
        fn clear_groups(&self) -> io::Result<()> {
            Ok(())
        }
        fn setresgid(&self, _: u32) -> io::Result<()> {
            Ok(())
        }
        fn setresuid(&self, _: u32) -> io::Result<()> {
            Ok(())
        }
        fn set_no_new_privs(&self) -> io::Result<()> {
            Ok(())
        }
        fn set_non_dumpable(&self) -> io::Result<()> {
            Ok(())
        }
        fn is_dumpable(&self) -> io::Result<bool> {
            Ok(false)
        }
        fn proc_status(&self) -> io::Result<String> {
            self.0.proc_status()
        }
        fn try_setuid_root(&self) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::EPERM))
        }
    }
    let err = drop_privileges(&DropConfig::default(), &Liar(RecordingSys::new(0))).unwrap_err();
    assert!(matches!(err, PrivilegeError::StillRoot { uid: 0, euid: 0 }), "{err}");
}

#[test]
fn status_fields_parse() {
    assert_eq!(status_field(CLEAN_STATUS, "NoNewPrivs"), Some("1"));
    assert_eq!(status_field(CLEAN_STATUS, "Uid"), Some("65534\t65534\t65534\t65534"));
    assert_eq!(status_field(CLEAN_STATUS, "Missing"), None);
}
