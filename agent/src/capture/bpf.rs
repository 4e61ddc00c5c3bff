//! The few `bpf(2)` commands aya 0.14 does not offer: reading a hash map in batches
//! (`BPF_MAP_LOOKUP_BATCH`, Linux ≥ 5.6), a task iterator's link and its per-read file
//! descriptors (`BPF_LINK_CREATE`, `BPF_ITER_CREATE`), and a program's run-time
//! statistics (`BPF_OBJ_GET_INFO_BY_FD`: run time, runs, recursion misses).

use std::{
    io,
    mem::{size_of, zeroed},
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
/// `BPF_TRACE_ITER` in `enum bpf_attach_type`.
const BPF_TRACE_ITER: u32 = 28;

/// # Safety
/// `attr` must be the union member `cmd` expects, of `size` bytes.
unsafe fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: the caller passes the attribute `cmd` expects.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut T).cast::<libc::c_void>(),
            size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The buffers of [`lookup_batch`], kept from one read to the next: a map is read every
/// tick, and fresh buffers cost their zeroing and page faults each time.
pub struct BatchBuf<K, V> {
    keys: Vec<K>,
    values: Vec<V>,
    max: usize,
}

impl<K: Copy + Default, V: Copy + Default> BatchBuf<K, V> {
    /// Buffers of a few entries, grown as batches come back full, up to `max` entries.
    pub fn new(max: usize) -> Self {
        let n = max.clamp(1, 64);
        BatchBuf {
            keys: vec![K::default(); n],
            values: vec![V::default(); n],
            max: max.max(1),
        }
    }

    /// Entries a batch holds now.
    fn chunk(&self) -> usize {
        self.keys.len()
    }

    fn grow(&mut self) {
        let n = (self.keys.len() * 2).min(self.max);
        self.keys.resize(n, K::default());
        self.values.resize(n, V::default());
    }
}

/// Every entry of a hash map, read in batches of `buf`'s size: a consistent walk that does
/// not restart when an entry is deleted under it (as `get_next_key` does). A full batch
/// makes the next ones larger. `Unsupported` (before Linux 5.6) is returned as an error of
/// kind `Unsupported`.
pub fn lookup_batch<K: Copy + Default, V: Copy + Default>(
    map: BorrowedFd<'_>,
    buf: &mut BatchBuf<K, V>,
    out: &mut Vec<(K, V)>,
) -> io::Result<()> {
    // Hash maps' batch tokens are u32 bucket numbers.
    let mut token_in = 0u64;
    let mut token_out = 0u64;
    let mut first = true;
    loop {
        let chunk = buf.chunk();
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { (&raw mut token_in) as u64 },
            out_batch: (&raw mut token_out) as u64,
            keys: buf.keys.as_mut_ptr() as u64,
            values: buf.values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: the batch attribute, with buffers of `chunk` keys and values.
        let r = unsafe { sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        let n = (attr.count as usize).min(chunk);
        out.extend(
            buf.keys[..n]
                .iter()
                .copied()
                .zip(buf.values[..n].iter().copied()),
        );
        match r {
            Ok(_) => {}
            // The end of the map (with the last entries, if any, in this batch).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            // A bucket holds more entries than the batch (nothing was copied): again, larger.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && chunk < buf.max => {
                buf.grow();
                continue;
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP | 524)) => {
                return Err(io::Error::new(io::ErrorKind::Unsupported, e));
            }
            Err(e) => return Err(e),
        }
        if n == chunk {
            buf.grow();
        }
        first = false;
        token_in = token_out;
    }
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    iter_info: u64,
    iter_info_len: u32,
    _pad: u32,
}

/// A link of an iterator program (no parameters: a task iterator visits every task).
pub fn iter_link(prog: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_TRACE_ITER,
        ..Default::default()
    };
    // SAFETY: the link-create attribute.
    let fd = unsafe { sys_bpf(BPF_LINK_CREATE, &mut attr) }?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[repr(C)]
#[derive(Default)]
struct IterCreateAttr {
    link_fd: u32,
    flags: u32,
}

/// A new run of the iterator behind `link`: reading the file runs it.
pub fn iter_create(link: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut attr = IterCreateAttr {
        link_fd: link.as_raw_fd() as u32,
        flags: 0,
    };
    // SAFETY: the iter-create attribute.
    let fd = unsafe { sys_bpf(BPF_ITER_CREATE, &mut attr) }?;
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `struct bpf_prog_info` up to the members read here (the kernel fills what it has).
#[repr(C)]
struct ProgInfoRaw {
    type_: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
    ifindex: u32,
    gpl_compatible: u32,
    netns_dev: u64,
    netns_ino: u64,
    nr_jited_ksyms: u32,
    nr_jited_func_lens: u32,
    jited_ksyms: u64,
    jited_func_lens: u64,
    btf_id: u32,
    func_info_rec_size: u32,
    func_info: u64,
    nr_func_info: u32,
    nr_line_info: u32,
    line_info: u64,
    jited_line_info: u64,
    nr_jited_line_info: u32,
    line_info_rec_size: u32,
    jited_line_info_rec_size: u32,
    nr_prog_tags: u32,
    prog_tags: u64,
    run_time_ns: u64,
    run_cnt: u64,
    recursion_misses: u64,
    verified_insns: u32,
    attach_btf_obj_id: u32,
}

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// A program's run-time statistics. `run_*` count only while
/// `kernel.bpf_stats_enabled` is on; `recursion_misses` (Linux ≥ 5.12) always.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgStats {
    pub id: u32,
    pub run_time_ns: u64,
    pub run_count: u64,
    pub recursion_misses: u64,
}

pub fn prog_stats(prog: BorrowedFd<'_>) -> io::Result<ProgStats> {
    // SAFETY: an all-zero bpf_prog_info is valid input.
    let mut info: ProgInfoRaw = unsafe { zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: prog.as_raw_fd() as u32,
        info_len: size_of::<ProgInfoRaw>() as u32,
        info: (&raw mut info) as u64,
    };
    // SAFETY: the get-info attribute, pointing at a buffer of `info_len` bytes.
    unsafe { sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    Ok(ProgStats {
        id: info.id,
        run_time_ns: info.run_time_ns,
        run_count: info.run_cnt,
        recursion_misses: info.recursion_misses,
    })
}
