//! Interpreted programs: which script or main module an interpreter runs, from its
//! arguments, so that each Python, Node, Java, shell, Perl, Ruby, PHP or Lua program is a
//! workload of its own rather than one with every other program of its interpreter.
//!
//! Pure functions of the executable's name and the arguments (arbitrary bytes, never
//! assumed UTF-8); what the arguments name is resolved and fingerprinted by the caller.
//! Inline code (`python -c`, `sh -c`, `node -e`, …), a program read from standard input
//! and an interactive interpreter name no program: they stay keyed by the interpreter.

/// The interpreters recognised, by executable name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interpreter {
    Python,
    Node,
    Java,
    Shell,
    Perl,
    Ruby,
    Php,
    Lua,
}

impl Interpreter {
    /// The name used in module keys (`module:<name>:…`).
    pub const fn name(self) -> &'static str {
        match self {
            Interpreter::Python => "python",
            Interpreter::Node => "node",
            Interpreter::Java => "java",
            Interpreter::Shell => "sh",
            Interpreter::Perl => "perl",
            Interpreter::Ruby => "ruby",
            Interpreter::Php => "php",
            Interpreter::Lua => "lua",
        }
    }

    /// The interpreter an executable is, from its file name (`python3.11`, `node`,
    /// `bash`…). A multi-call `busybox` is the shell when `argv0` names one.
    pub fn of(exe: &[u8], argv0: &[u8]) -> Option<Interpreter> {
        let name = basename(exe);
        if name == b"busybox" {
            return match basename(argv0) {
                b"busybox" => None,
                other => Self::of(other, b""),
            };
        }
        // `name` followed by a version (`python3.11`, `perl5.36.0`, `php8.2`) or nothing.
        let versioned = |stem: &[u8]| {
            name.strip_prefix(stem)
                .is_some_and(|v| v.iter().all(|c| c.is_ascii_digit() || *c == b'.'))
        };
        Some(match name {
            _ if versioned(b"python") || versioned(b"pypy") => Interpreter::Python,
            b"node" | b"nodejs" => Interpreter::Node,
            b"java" => Interpreter::Java,
            b"sh" | b"bash" | b"dash" | b"ash" | b"zsh" | b"ksh" | b"mksh" | b"ksh93" => {
                Interpreter::Shell
            }
            _ if versioned(b"perl") => Interpreter::Perl,
            _ if versioned(b"ruby") => Interpreter::Ruby,
            _ if versioned(b"php") => Interpreter::Php,
            _ if versioned(b"lua") || name == b"luajit" => Interpreter::Lua,
            _ => return None,
        })
    }
}

/// What an interpreter was asked to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// A script (or a Java archive) by path, as given.
    Script(&'a [u8]),
    /// A module or main class by name (`python -m http.server`, `java com.example.Main`).
    Module(&'a [u8]),
}

/// What `interp` runs, given its arguments after `argv[0]`; `None` for inline code,
/// standard input, or no program at all.
pub fn target<'a>(interp: Interpreter, args: &[&'a [u8]]) -> Option<Target<'a>> {
    match interp {
        Interpreter::Python => short_options(args, b"cmWX", |opt, value| match opt {
            b'm' => Some(Some(Target::Module(value))),
            b'c' => Some(None),
            _ => None,
        }),
        Interpreter::Shell => shell(args),
        Interpreter::Perl => short_options(args, b"eEIMm", |opt, _| match opt {
            b'e' | b'E' => Some(None),
            _ => None,
        }),
        Interpreter::Ruby => short_options(args, b"eIrCE", |opt, _| match opt {
            b'e' => Some(None),
            _ => None,
        }),
        Interpreter::Lua => short_options(args, b"el", |opt, _| match opt {
            b'e' => Some(None),
            _ => None,
        }),
        Interpreter::Php => short_options(args, b"rfcdzS", |opt, value| match opt {
            b'r' | b'S' => Some(None),
            b'f' => Some(Some(Target::Script(value))),
            _ => None,
        }),
        Interpreter::Node => node(args),
        Interpreter::Java => java(args),
    }
}

/// Arguments in the getopt style shared by most interpreters: bundled short options,
/// `with_value` ones taking the rest of their bundle or the next argument (`-mhttp.server`,
/// `-m http.server`). `decide` turns an option and its value into an answer (`Some(answer)`) or
/// lets parsing go on (`None`). The first argument that is not an option is the script;
/// `-` means "read the program from standard input".
fn short_options<'a>(
    args: &[&'a [u8]],
    with_value: &[u8],
    decide: impl Fn(u8, &'a [u8]) -> Option<Option<Target<'a>>>,
) -> Option<Target<'a>> {
    let mut i = 0;
    while let Some(&a) = args.get(i) {
        i += 1;
        if a == b"--" {
            return args.get(i).map(|s| Target::Script(s));
        }
        if a == b"-" {
            return None;
        }
        if a.starts_with(b"--") {
            // Long options take no separate value in these interpreters, except a few.
            if a == b"--check-hash-based-pycs" {
                i += 1;
            }
            continue;
        }
        let Some(bundle) = a.strip_prefix(b"-") else {
            return Some(Target::Script(a));
        };
        for (k, &c) in bundle.iter().enumerate() {
            if with_value.contains(&c) {
                let rest = &bundle[k + 1..];
                let value = if rest.is_empty() {
                    i += 1;
                    match args.get(i - 1) {
                        Some(v) => *v,
                        // An option missing its value: nothing runs.
                        None => return None,
                    }
                } else {
                    rest
                };
                if let Some(answer) = decide(c, value) {
                    return answer;
                }
                break;
            }
        }
    }
    None
}

fn shell<'a>(args: &[&'a [u8]]) -> Option<Target<'a>> {
    let mut i = 0;
    while let Some(&a) = args.get(i) {
        i += 1;
        match a {
            b"--" => return args.get(i).map(|s| Target::Script(s)),
            b"-" => return None,
            b"-o" | b"+o" | b"-O" | b"+O" | b"--rcfile" | b"--init-file" => i += 1,
            _ if a.starts_with(b"--") => {}
            _ if a.starts_with(b"-") || a.starts_with(b"+") => {
                // `-c` runs its argument, `-s` and `-i` read commands from the terminal
                // or standard input.
                if a[1..].iter().any(|c| matches!(c, b'c' | b's' | b'i')) {
                    return None;
                }
            }
            _ => return Some(Target::Script(a)),
        }
    }
    None
}

fn node<'a>(args: &[&'a [u8]]) -> Option<Target<'a>> {
    const WITH_VALUE: &[&[u8]] = &[
        b"-r",
        b"--require",
        b"--import",
        b"--loader",
        b"--experimental-loader",
        b"-C",
        b"--conditions",
        b"--inspect-port",
        b"--title",
        b"--env-file",
        b"--input-type",
        b"--stack-size",
        b"--max-old-space-size",
    ];
    let mut i = 0;
    while let Some(&a) = args.get(i) {
        i += 1;
        match a {
            b"--" => return args.get(i).map(|s| Target::Script(s)),
            b"-" | b"-e" | b"--eval" | b"-p" | b"--print" | b"-i" | b"--interactive" => {
                return None;
            }
            _ if WITH_VALUE.contains(&a) => i += 1,
            _ if a.starts_with(b"-") => {}
            _ => return Some(Target::Script(a)),
        }
    }
    None
}

fn java<'a>(args: &[&'a [u8]]) -> Option<Target<'a>> {
    const WITH_VALUE: &[&[u8]] = &[
        b"-cp",
        b"-classpath",
        b"--class-path",
        b"-p",
        b"--module-path",
        b"--upgrade-module-path",
        b"--add-modules",
        b"--add-opens",
        b"--add-exports",
        b"--add-reads",
        b"--patch-module",
        b"--limit-modules",
        b"--enable-native-access",
        b"--source",
    ];
    let mut i = 0;
    while let Some(&a) = args.get(i) {
        i += 1;
        match a {
            b"-jar" => return args.get(i).map(|s| Target::Script(s)),
            b"-m" | b"--module" => return args.get(i).map(|s| Target::Module(s)),
            _ if a.starts_with(b"--module=") => return Some(Target::Module(&a[9..])),
            _ if WITH_VALUE.contains(&a) => i += 1,
            _ if a.starts_with(b"-") || a.starts_with(b"@") => {}
            // Source-file mode (`java Main.java`) runs a file; otherwise a main class.
            _ if a.ends_with(b".java") => return Some(Target::Script(a)),
            _ => return Some(Target::Module(a)),
        }
    }
    None
}

/// The last path component (the whole of `p` when it has no `/`).
pub fn basename(p: &[u8]) -> &[u8] {
    match p.iter().rposition(|&c| c == b'/') {
        Some(i) => &p[i + 1..],
        None => p,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rstest::rstest;

    use super::*;

    fn run(exe: &str, argv: &[&str]) -> Option<(Interpreter, Option<Target<'static>>)> {
        let argv: Vec<&'static [u8]> = argv
            .iter()
            .map(|a| &*Box::leak(a.as_bytes().to_vec().into_boxed_slice()))
            .collect();
        let interp = Interpreter::of(exe.as_bytes(), argv.first().copied().unwrap_or(b""))?;
        Some((interp, target(interp, &argv[1..])))
    }

    #[rstest]
    #[case("/usr/bin/python3", &["python3", "app.py", "--port", "80"], Some(Target::Script(b"app.py")))]
    #[case("/usr/bin/python3.11", &["python3", "-u", "-W", "ignore", "/srv/a.py"], Some(Target::Script(b"/srv/a.py")))]
    #[case("/usr/bin/python3", &["python3", "-m", "http.server", "8000"], Some(Target::Module(b"http.server")))]
    #[case("/usr/bin/python3", &["python3", "-mhttp.server"], Some(Target::Module(b"http.server")))]
    #[case("/usr/bin/python3", &["python3", "-Em", "pip", "list"], Some(Target::Module(b"pip")))]
    #[case("/usr/bin/python3", &["python3", "-c", "print(1)"], None)]
    #[case("/usr/bin/python3", &["python3", "-uc", "print(1)"], None)]
    #[case("/usr/bin/python3", &["python3"], None)]
    #[case("/usr/bin/python3", &["python3", "-"], None)]
    #[case("/usr/bin/python3", &["python3", "-X", "dev", "--", "-weird.py"], Some(Target::Script(b"-weird.py")))]
    #[case("/usr/bin/node", &["node", "--require", "x", "server.js"], Some(Target::Script(b"server.js")))]
    #[case("/usr/bin/node", &["node", "--max-old-space-size=4096", "dist/main.js"], Some(Target::Script(b"dist/main.js")))]
    #[case("/usr/bin/node", &["node", "-e", "1"], None)]
    #[case("/usr/bin/java", &["java", "-Xmx1g", "-jar", "app.jar", "x"], Some(Target::Script(b"app.jar")))]
    #[case("/usr/bin/java", &["java", "-cp", "a.jar:b.jar", "com.example.Main", "arg"], Some(Target::Module(b"com.example.Main")))]
    #[case("/usr/bin/java", &["java", "-m", "mod/com.x.Main"], Some(Target::Module(b"mod/com.x.Main")))]
    #[case("/usr/bin/java", &["java", "Hello.java"], Some(Target::Script(b"Hello.java")))]
    #[case("/bin/bash", &["bash", "-e", "-o", "pipefail", "./build.sh", "all"], Some(Target::Script(b"./build.sh")))]
    #[case("/bin/sh", &["sh", "-c", "echo hi"], None)]
    #[case("/bin/dash", &["sh", "-ec", "echo hi"], None)]
    #[case("/bin/bash", &["bash"], None)]
    #[case("/bin/busybox", &["sh", "/etc/init.d/rcS"], Some(Target::Script(b"/etc/init.d/rcS")))]
    #[case("/usr/bin/perl", &["perl", "-w", "-Ilib", "tool.pl"], Some(Target::Script(b"tool.pl")))]
    #[case("/usr/bin/perl", &["perl", "-I", "lib", "tool.pl"], Some(Target::Script(b"tool.pl")))]
    #[case("/usr/bin/perl", &["perl", "-lne", "print"], None)]
    #[case("/usr/bin/ruby3.1", &["ruby", "-r", "json", "x.rb"], Some(Target::Script(b"x.rb")))]
    #[case("/usr/bin/php8.2", &["php", "-d", "a=b", "-f", "index.php"], Some(Target::Script(b"index.php")))]
    #[case("/usr/bin/php", &["php", "artisan", "serve"], Some(Target::Script(b"artisan")))]
    #[case("/usr/bin/lua5.4", &["lua", "-l", "socket", "x.lua"], Some(Target::Script(b"x.lua")))]
    fn finds_the_program(
        #[case] exe: &str,
        #[case] argv: &[&str],
        #[case] want: Option<Target<'static>>,
    ) {
        let (_, got) = run(exe, argv).expect("an interpreter");
        assert_eq!(got, want, "{exe} {argv:?}");
    }

    #[rstest]
    #[case("/usr/bin/gcc")]
    #[case("/usr/bin/pythonista")]
    #[case("/usr/sbin/nginx")]
    #[case("")]
    fn other_executables_are_not_interpreters(#[case] exe: &str) {
        assert_eq!(Interpreter::of(exe.as_bytes(), b"x"), None);
    }

    #[test]
    fn busybox_is_the_shell_only_as_a_shell() {
        assert_eq!(
            Interpreter::of(b"/bin/busybox", b"/bin/ash"),
            Some(Interpreter::Shell)
        );
        assert_eq!(Interpreter::of(b"/bin/busybox", b"ls"), None);
        assert_eq!(Interpreter::of(b"/bin/busybox", b"busybox"), None);
    }

    proptest! {
        /// Any bytes as the executable and arguments: never a panic, and what is found is
        /// one of the arguments (never made up).
        #[test]
        fn arbitrary_arguments_never_panic(
            exe in prop::collection::vec(any::<u8>(), 0..24),
            argv in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..12), 0..8),
            interp in 0usize..8,
        ) {
            let all = [
                Interpreter::Python, Interpreter::Node, Interpreter::Java, Interpreter::Shell,
                Interpreter::Perl, Interpreter::Ruby, Interpreter::Php, Interpreter::Lua,
            ];
            let args: Vec<&[u8]> = argv.iter().map(Vec::as_slice).collect();
            let _ = Interpreter::of(&exe, args.first().copied().unwrap_or(b""));
            if let Some(Target::Script(s) | Target::Module(s)) = target(all[interp], &args) {
                prop_assert!(args.iter().any(|a| a.ends_with(s)));
            }
        }
    }
}
