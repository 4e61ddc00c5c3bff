//! What start-up leaves behind, given back once the agent runs: the heap it freed and the
//! pages of code it ran only once.

/// Gives back to the kernel what start-up allocated and freed: the kernel's BTF and the
/// programs' ELF parsed to load them, the model's optimisation passes. glibc keeps freed
/// heap for reuse and does not return it while anything is allocated above it: measured,
/// 12 MB of the agent's 54 MB RSS (BENCHMARKS.md). Other C libraries: nothing to do.
pub fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only walks and releases the allocator's own free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Asks the kernel to reclaim the pages of the agent's own executable that are resident:
/// most of them ran once, at start-up (loading and optimising the models alone touches
/// ~6 MB of code that never runs again); those a tick runs come back at their first use.
/// `MADV_PAGEOUT` (Linux ≥ 5.4); where it is refused, nothing changes. Returns the bytes
/// advised.
pub fn release_startup_code() -> usize {
    let (Ok(exe), Ok(maps)) = (
        std::fs::read_link("/proc/self/exe"),
        std::fs::read_to_string("/proc/self/maps"),
    ) else {
        return 0;
    };
    let Some(exe) = exe.to_str() else {
        return 0;
    };
    let mut advised = 0;
    for (start, end) in read_only_ranges(&maps, exe) {
        // SAFETY: the range is a whole mapping of this process's own executable, read-only
        // (code and constants): reclaiming its pages changes no content, they are read
        // back from the file when next used.
        let r =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_PAGEOUT) };
        if r == 0 {
            advised += end - start;
        }
    }
    advised
}

/// The read-only mappings of file `path` in `maps` (`/proc/<pid>/maps`), as address
/// ranges: its code and constants, not its data (written, so no longer the file's pages).
fn read_only_ranges(maps: &str, path: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            // "start-end perms offset dev inode path" (the path may hold spaces).
            let mut f = line.splitn(6, ' ');
            let range = f.next()?;
            let perms = f.next()?;
            let file = f.nth(3)?.trim_start();
            if file != path || perms.as_bytes().get(1) != Some(&b'-') {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            );
            (a < b).then_some((a, b))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55f0c0000000-55f0c0400000 r--p 00000000 08:01 1234 /usr/bin/umbra agent
55f0c0400000-55f0c1400000 r-xp 00400000 08:01 1234 /usr/bin/umbra agent
55f0c1400000-55f0c1480000 r--p 01400000 08:01 1234 /usr/bin/umbra agent
55f0c1480000-55f0c1490000 rw-p 01480000 08:01 1234 /usr/bin/umbra agent
55f0c1490000-55f0c14a0000 r-xp 00000000 08:01 99 /usr/bin/umbra agent2
7f0000000000-7f0000200000 r-xp 00000000 08:01 77 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000300000-7f0000301000 rw-p 00000000 00:00 0
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
";

    #[test]
    fn only_the_executables_read_only_mappings_are_taken() {
        assert_eq!(
            read_only_ranges(MAPS, "/usr/bin/umbra agent"),
            [
                (0x55f0c0000000, 0x55f0c0400000),
                (0x55f0c0400000, 0x55f0c1400000),
                (0x55f0c1400000, 0x55f0c1480000),
            ]
        );
        assert!(read_only_ranges(MAPS, "/usr/bin/umbra").is_empty());
        assert!(read_only_ranges("garbage\n\n-", "/usr/bin/umbra agent").is_empty());
    }

    /// Whether this kernel knows `MADV_PAGEOUT` (tried on a page of the stack).
    fn pageout_exists() -> bool {
        let page = [0u8; 8192];
        let addr = (page.as_ptr() as usize + 4095) & !4095;
        // SAFETY: a page inside `page`, which lives across the call; reclaiming it keeps
        // its content.
        unsafe { libc::madvise(addr as *mut libc::c_void, 4096, libc::MADV_PAGEOUT) == 0 }
    }

    /// Resident bytes of the mappings of `path` in this process (`/proc/self/smaps`).
    fn resident(path: &str) -> usize {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut mine = false;
        let mut kb = 0;
        for line in smaps.lines() {
            if let Some(rest) = line.strip_prefix("Rss:") {
                if mine {
                    kb += rest
                        .trim()
                        .trim_end_matches(" kB")
                        .parse::<usize>()
                        .unwrap();
                }
            } else if line.split(' ').next().is_some_and(|f| f.contains('-')) {
                mine = line.ends_with(path);
            }
        }
        kb * 1024
    }

    #[test]
    fn this_process_gives_back_its_code_pages_and_keeps_running() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let exe = exe.to_str().unwrap();
        let before = resident(exe);
        let advised = release_startup_code();
        let after = resident(exe);
        eprintln!("advised {advised} bytes; resident {before} -> {after}");
        if !pageout_exists() {
            eprintln!("skipped: no MADV_PAGEOUT on this kernel (Linux < 5.4)");
            return;
        }
        assert!(advised > 0);
        // What this test runs next came back; most of what start-up ran did not.
        assert!(after < before, "{before} -> {after}");
    }
}
