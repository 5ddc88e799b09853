//! Per-packet cost of the TC and XDP programs on the packets every node sees whether or not
//! they belong to a Service, measured with `BPF_PROG_TEST_RUN` (the kernel runs the program
//! `repeat` times on one packet in a loop): no traffic generator, no scheduler, so the numbers
//! hold to a nanosecond, where the dataplane suite's wrk rounds scatter by percents.
//!
//! The embedded object is loaded without pins or attachment (fresh maps, no Services, no
//! node settings, a cluster's ServiceCIDRs), so nothing on the machine changes. `--object PATH` measures another build's
//! object alongside, the same way, to compare a change.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, lpm_trie::Key},
    programs::{Program, TestRun as _, TestRunOptions},
};
use serde_json::json;
use tollgate::{dataplane::addr::prefix_words, enls::model::IpNet};
use tollgate_common::lb::svccidr::{self, SvcCidrKey, SvcCidrValue};

use super::summarize;

#[derive(Debug, Clone)]
pub struct Options {
    /// Program runs per measurement (one `BPF_PROG_TEST_RUN` call).
    pub repeat: u32,
    /// Measurements per case and object (the median is reported).
    pub samples: usize,
    /// Other builds' objects to measure alongside the embedded one: `PATH` or `LABEL=PATH`
    /// (the label names the column, e.g. the commit it was built from).
    pub objects: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            repeat: 1_000_000,
            samples: 7,
            objects: Vec::new(),
        }
    }
}

/// A packet and the program that sees it.
struct Case {
    name: &'static str,
    program: &'static str,
    frame: Vec<u8>,
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const IPIP: u8 = 4;
const ACK: u8 = 0x10;
const SYN: u8 = 0x02;

/// Ethernet + IPv4 (no options) + a TCP header with `flags` or a UDP header, 64 bytes of
/// payload. Checksums are left zero: no program on these paths reads them.
fn frame(src: [u8; 4], dst: [u8; 4], proto: u8, dport: u16, flags: u8) -> Vec<u8> {
    let l4: Vec<u8> = if proto == TCP {
        let mut h = vec![0u8; 20];
        h[0..2].copy_from_slice(&40_000u16.to_be_bytes());
        h[2..4].copy_from_slice(&dport.to_be_bytes());
        h[12] = 0x50;
        h[13] = flags;
        h[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
        h
    } else {
        let mut h = vec![0u8; 8];
        h[0..2].copy_from_slice(&40_000u16.to_be_bytes());
        h[2..4].copy_from_slice(&dport.to_be_bytes());
        h[4..6].copy_from_slice(&(8u16 + 64).to_be_bytes());
        h
    };
    let total = (20 + l4.len() + 64) as u16;
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    f.extend_from_slice(&[0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0]);
    f[16..18].copy_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&l4);
    f.extend_from_slice(&[0u8; 64]);
    f
}

/// Ethernet + IPv6 (pod fd00:244:1::11 → fd00:244:1::12) + a TCP header with `flags`, 64 bytes
/// of payload (checksum left zero, as above).
fn frame6(proto: u8, dport: u16, flags: u8) -> Vec<u8> {
    let v4 = frame([0; 4], [0; 4], proto, dport, flags);
    let l4 = &v4[14 + 20..];
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd];
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    f.extend_from_slice(&[proto, 64]);
    for last in [0x11u8, 0x12] {
        f.extend_from_slice(&[0xfd, 0, 0x02, 0x44, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, last]);
    }
    f.extend_from_slice(l4);
    f
}

/// Ethernet + IPv4 (`src` → `dst`) + `payload` (checksums left zero, as above).
fn frame_with(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = frame(src, dst, proto, 0, 0);
    f.truncate(14 + 20);
    f[16..18].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn cases() -> Vec<Case> {
    let (pod, peer, client, node) = (
        [10, 244, 1, 11],
        [10, 244, 1, 12],
        [192, 168, 1, 100],
        [192, 168, 1, 11],
    );
    vec![
        Case {
            name: "pod → pod IP, TCP segment (ACK)",
            program: "tg_tc_from_pod",
            frame: frame(pod, peer, TCP, 8080, ACK),
        },
        Case {
            name: "pod → pod IP, TCP SYN",
            program: "tg_tc_from_pod",
            frame: frame(pod, peer, TCP, 8080, SYN),
        },
        Case {
            name: "pod → pod IP, UDP",
            program: "tg_tc_from_pod",
            frame: frame(pod, peer, UDP, 53, 0),
        },
        Case {
            name: "outside → node, TCP segment (ACK), TC",
            program: "tg_tc_ingress",
            frame: frame(client, node, TCP, 22, ACK),
        },
        Case {
            name: "pod on another node → pod, TCP segment (ACK), TC",
            program: "tg_tc_ingress",
            frame: frame([10, 244, 2, 11], pod, TCP, 8080, ACK),
        },
        Case {
            name: "pod → pod IP, IPv6 TCP segment (ACK)",
            program: "tg_tc_from_pod",
            frame: frame6(TCP, 8080, ACK),
        },
        Case {
            name: "pod → pod IP, ping (ICMP echo request)",
            program: "tg_tc_from_pod",
            frame: frame_with(pod, peer, ICMP, &[8, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0]),
        },
        Case {
            name: "another node → pod, IPIP (a tunnel's packet), TC",
            program: "tg_tc_ingress",
            frame: frame_with(
                [192, 168, 1, 12],
                node,
                IPIP,
                &frame([10, 244, 2, 11], pod, TCP, 8080, ACK)[14..],
            ),
        },
        Case {
            name: "outside → node, TCP segment (ACK), XDP",
            program: "tg_xdp_uplink",
            frame: frame(client, node, TCP, 22, ACK),
        },
    ]
}

/// An object's programs, loaded (not attached) with fresh maps.
struct Loaded {
    label: String,
    ebpf: Ebpf,
}

fn load(label: String, bytes: &[u8], names: &[&'static str]) -> anyhow::Result<Loaded> {
    let mut ebpf = EbpfLoader::new()
        .load(bytes)
        .with_context(|| format!("loading {label}"))?;
    for &name in names {
        let result = match ebpf.program_mut(name) {
            Some(Program::SchedClassifier(p)) => p.load(),
            Some(Program::Xdp(p)) => p.load(),
            _ => bail!("{label}: no TC or XDP program {name}"),
        };
        result.with_context(|| format!("{label}: loading {name}"))?;
    }
    service_cidrs(&mut ebpf).with_context(|| format!("{label}: {}", svccidr::NAME))?;
    Ok(Loaded { label, ebpf })
}

/// A cluster's ServiceCIDRs in the object's `tg_svccidr_v1` and their slices in
/// `tg_cidrbits_v1` (objects before them have neither): the programs look the destinations of
/// SYNs and datagrams up there, and empty maps would make that cheaper than on a node. No
/// case's destination is inside them.
fn service_cidrs(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let prefixes: Vec<(u32, [u32; 4])> = ["10.96.0.0/12", "fd00:10:96::/112"]
        .iter()
        .map(|c| {
            let net = IpNet::parse(c).context("a prefix")?;
            let (addr, bits) = prefix_words(net.addr, net.prefix_len);
            Ok((bits, addr))
        })
        .collect::<anyhow::Result<_>>()?;
    if let Some(map) = ebpf.map_mut(svccidr::BITS_NAME) {
        let mut filter: Array<_, u64> = Array::try_from(map)?;
        for (bits, addr) in &prefixes {
            let (first, last) = svccidr::slices(addr, *bits);
            for slice in first..=last {
                let (word, bit) = svccidr::slice_bit(slice);
                let old = filter.get(&word, 0)?;
                filter.set(word, old | bit, 0)?;
            }
        }
    }
    if let Some(map) = ebpf.map_mut(svccidr::NAME) {
        let mut trie: LpmTrie<_, SvcCidrKey, SvcCidrValue> = LpmTrie::try_from(map)?;
        for (bits, addr) in prefixes {
            trie.insert(
                &Key::new(bits, SvcCidrKey { addr }),
                SvcCidrValue::default(),
                0,
            )?;
        }
    }
    Ok(())
}

/// Nanoseconds per program run over one `repeat`-run call (wall clock around the call, so
/// the one-time packet setup is spread over the runs).
fn measure(l: &Loaded, case: &Case, repeat: u32) -> anyhow::Result<f64> {
    let mut out = vec![0u8; case.frame.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(&case.frame);
    opts.data_out = Some(&mut out);
    opts.repeat = repeat;
    // Every case is a packet the programs leave alone: TC_ACT_UNSPEC (-1) or TC_ACT_OK at TC
    // (TC_ACT_SHOT is 2), XDP_PASS (2) at XDP.
    const TC_PASS: [u32; 2] = [u32::MAX, 0];
    const XDP_PASS: [u32; 1] = [2];
    let start = Instant::now();
    let (result, pass): (_, &[u32]) = match l.ebpf.program(case.program) {
        Some(Program::SchedClassifier(p)) => (p.test_run(opts), &TC_PASS),
        Some(Program::Xdp(p)) => (p.test_run(opts), &XDP_PASS),
        _ => bail!("{}: no program {}", l.label, case.program),
    };
    let result = result.with_context(|| format!("{}: test run of {}", l.label, case.program))?;
    let ns = start.elapsed().as_secs_f64() * 1e9 / f64::from(repeat.max(1));
    if !pass.contains(&result.return_value) {
        bail!(
            "{}: {} returned {} for \"{}\" (expected to pass it)",
            l.label,
            case.program,
            result.return_value as i32,
            case.name
        );
    }
    Ok(ns)
}

#[derive(Debug, serde::Serialize)]
pub struct CaseResult {
    pub case: String,
    pub program: String,
    /// Median ns per run, one per object (the embedded one first).
    pub ns_per_run: Vec<f64>,
}

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub machine: String,
    /// The commit measured (`+changes`: with uncommitted changes), taken before the run writes
    /// its own results.
    pub commit: String,
    pub repeat: u32,
    pub samples: usize,
    pub objects: Vec<String>,
    pub cases: Vec<CaseResult>,
}

pub fn run(opts: &Options, out_dir: &Path, markdown: &Path) -> anyhow::Result<Report> {
    let commit = super::commit();
    let cases = cases();
    let mut names: Vec<&'static str> = cases.iter().map(|c| c.program).collect();
    names.sort_unstable();
    names.dedup();
    let mut loaded = vec![load(
        "this build".into(),
        tollgate::dataplane::object::KERNEL_OBJECT,
        &names,
    )?];
    for arg in &opts.objects {
        let (label, path) = match arg.split_once('=') {
            Some((label, path)) => (label.to_owned(), PathBuf::from(path)),
            None => (arg.clone(), PathBuf::from(arg)),
        };
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        // ELF parsing wants the bytes 8-byte aligned.
        let mut aligned = vec![0u64; bytes.len().div_ceil(8)];
        let buf = bytemuck_bytes(&mut aligned, bytes.len());
        buf.copy_from_slice(&bytes);
        loaded.push(load(label, buf, &names)?);
    }
    let mut results = Vec::new();
    for case in &cases {
        let mut samples = vec![Vec::new(); loaded.len()];
        // Objects alternate sample by sample, so a slower moment of the machine hits all.
        for _ in 0..opts.samples {
            for (i, l) in loaded.iter().enumerate() {
                samples[i].push(measure(l, case, opts.repeat)?);
            }
        }
        results.push(CaseResult {
            case: case.name.into(),
            program: case.program.into(),
            ns_per_run: samples.iter_mut().map(|s| summarize(s).p50).collect(),
        });
    }
    let report = Report {
        machine: super::machine(),
        commit,
        repeat: opts.repeat,
        samples: opts.samples,
        objects: loaded.iter().map(|l| l.label.clone()).collect(),
        cases: results,
    };
    write(&report, out_dir, markdown)?;
    Ok(report)
}

/// `len` bytes of `words` as a byte slice.
fn bytemuck_bytes(words: &mut [u64], len: usize) -> &mut [u8] {
    assert!(len <= words.len() * 8);
    // SAFETY: the u64 buffer is at least `len` bytes; u8 has no alignment or validity needs.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), len) }
}

fn write(r: &Report, out_dir: &Path, markdown: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out_dir)?;
    std::fs::write(
        out_dir.join("programs.json"),
        serde_json::to_string_pretty(&json!(r))?,
    )?;
    let mut table = format!(
        "| packet | program | {} |\n|---|---|{}\n",
        r.objects.join(" | "),
        "---:|".repeat(r.objects.len())
    );
    for c in &r.cases {
        let cells: Vec<String> = c.ns_per_run.iter().map(|ns| format!("{ns:.1}")).collect();
        table += &format!("| {} | `{}` | {} |\n", c.case, c.program, cells.join(" | "));
    }
    let body = format!(
        "## Programs: per-packet cost\n\n\
Machine: {machine}; this build: {commit}. `cargo xtask bench programs`: each program runs on one packet {repeat} times \
per `BPF_PROG_TEST_RUN` call, {samples} calls per packet, median; ns per run (wall clock \
around the call over the runs). These are the packets every node carries whether or not they \
belong to a Service (pod traffic that the socket hooks already balanced, traffic to the node \
itself), so this is what installing Tollgate costs per packet, without the kernel's hook \
dispatch around the program (TCX, the XDP driver path), which no program change removes. The \
maps are fresh and unpinned (no Services, no node settings; the ServiceCIDRs 10.96.0.0/12 \
and fd00:10:96::/112, which no packet here is for). The numbers include the test loop's own \
per-run cost. `tollgate-bench programs --object [LABEL=]PATH` adds a column for another \
build's kernel object (`target/release/build/tollgate-*/out/tollgate-ebpf`) to compare a \
change.\n\n{table}",
        machine = r.machine,
        commit = r.commit,
        repeat = r.repeat,
        samples = r.samples,
    );
    super::update_section(markdown, "programs", &body)?;
    Ok(())
}
