import Foundation

/// The values of a distro's config.sh after bash evaluated it.
public struct DistroConfig: Sendable, Equatable, Codable {
    public var values: [String: String]

    /// Host programs the hook runs without declaring them (see HookToolScan).
    public var undeclaredHostTools: [UndeclaredHostTool] = []
    /// What the hook changes on this host when it runs there (the host's `apt update`).
    public var hostChanges: [String] = []

    public init(values: [String: String]) { self.values = values }

    public subscript(_ name: String) -> String? { values[name] }

    public var osName: String? { values["OS_NAME"] }
    public var osVersion: String? { values["OS_VERSION"] }
    public var packages: [String] { words(values["PACKAGES"]) }
    /// `kata-agent` (Kata's own value, as in Kata's alpine) means `agent`.
    public var initProcess: String {
        let raw = values["INIT_PROCESS"].flatMap { $0.isEmpty ? nil : $0 } ?? "systemd"
        return raw == "kata-agent" ? "agent" : raw
    }
    /// The values INIT_PROCESS may take.
    public static let initProcesses = ["systemd", "agent", "kata-agent"]
    public var archExcludeList: [String] { words(values["ARCH_EXCLUDE_LIST"]) }
    public var repoURL: String? { values["REPO_URL"].flatMap { $0.isEmpty ? nil : $0 } }
    /// DEFAULT_FORMATS: the formats a build writes when none is asked (no --format, --initrd,
    /// --image or --rootfs-dir); empty: the rootfs directory, NAME.initrd and NAME.img.
    public var defaultFormats: [String] { words(values["DEFAULT_FORMATS"]) }
    /// Host tools the hook needs: words, each a `|`-separated list of alternatives.
    public var hostTools: [[String]] { words(values["HOST_TOOLS"]).map { $0.split(separator: "|").map(String.init) } }

    /// The alternatives of `hostTools` that are missing on this host (empty when all are present).
    /// Undeclared ones (HookToolScan) are named with the file that runs them and their package.
    public func missingHostTools(path: String? = ProcessInfo.processInfo.environment["PATH"]) -> [String] {
        hostTools.filter { alternatives in alternatives.allSatisfy { ProcessRunner.which($0, path: path) == nil } }
            .map { $0.joined(separator: " or ") }
            + undeclaredHostTools.filter { $0.alternatives.allSatisfy { ProcessRunner.which($0, path: path) == nil } }
            .map(\.description)
    }

    private func words(_ s: String?) -> [String] {
        (s ?? "").split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" }).map(String.init)
    }
}

/// Evaluates config.sh with bash itself: sourced in a clean bash, values read back.
public struct ConfigEvaluator: Sendable {
    /// Variables always read back, whether or not config.sh sets them.
    public static let knownVariables = ["OS_NAME", "OS_VERSION", "PACKAGES", "INIT_PROCESS", "ARCH_EXCLUDE_LIST",
                                        "REPO_URL", "HOST_TOOLS", "EXTRA_PKGS", "EXTRA_PKG", "AGENT_INIT", "ARCH",
                                        "MIRROR", "GPG_KEY_URL", "METALINK", "SECCOMP", "SELINUX", "LIBC", "DEFAULT_FORMATS"]

    /// Reads back the known variables and every variable config.sh adds, NUL-separated.
    /// The config file and the library come in as $1 and $2, never spliced into the script.
    /// The hook helpers (info, die...) come first: config.sh may call them, and
    /// a `die` in config.sh (a missing REPO_URL...) is reported with its message.
    static let script = HookLibrary.text + "\n" + #"""
    mapfile -t __rootfs_names < <(compgen -v)
    __rootfs_before=" ${__rootfs_names[*]} "
    source "$1"
    __rootfs_status=$?
    if [ -n "$2" ]; then
        # No rootfs_lib.sh: Kata's default build_rootfs (dnf) from the helpers builds it.
        if [ -e "$2" ]; then
            ( unset -f build_rootfs plan_rootfs; source "$2" >/dev/null 2>&1; declare -F build_rootfs >/dev/null ) ||
                { printf 'rootfs: no-build-rootfs\n' >&2; exit 66; }
        fi
    fi
    # Arrays (Kata's PACKAGES=( ... )) are read back whole, joined by spaces.
    IFS=$' \t\n'
    printf '%s\0' "__rootfs_begin"
    for __rootfs_v in $(compgen -v); do
        case "$__rootfs_v" in __rootfs_*|BASH*|FUNCNAME|PIPESTATUS|_|LINENO|RANDOM|SECONDS|SRANDOM|EPOCH*) continue ;; esac
        case " $__ROOTFS_KNOWN " in *" $__rootfs_v "*) ;; *)
            case "$__rootfs_before" in *" $__rootfs_v "*) continue ;; esac ;;
        esac
        __rootfs_ref="$__rootfs_v[*]"
        printf '%s\0%s\0' "$__rootfs_v" "${!__rootfs_ref-}"
    done
    """#

    public var runner = ProcessRunner()
    public init() {}

    /// - Parameters:
    ///   - environment: overrides (OS_VERSION from a flag, AGENT_INIT...) on top of the caller's environment.
    ///   - requireHook: also check that rootfs_lib.sh defines build_rootfs().
    public func evaluate(_ distro: Distro, environment: [String: String], requireHook: Bool = true) async throws -> DistroConfig {
        // A syntax error must not pass for a config that merely ends in a false test.
        do {
            try await runner.capture(ToolCommand("bash", ["-n", distro.configPath]))
        } catch let failure as ToolFailure {
            throw RootfsError("\(distro.configPath) has a syntax error",
                              hint: "fix the file; bash -n \(shellQuote(distro.configPath)) shows the error",
                              details: failure.outputTail)
        }
        var env = KataCallerEnvironment.variables(for: distro).merging(environment) { $1 }
        env["CONFIG_DIR"] = distro.directory
        env["__ROOTFS_KNOWN"] = Self.knownVariables.joined(separator: " ")
        let command = ToolCommand("bash", ["--noprofile", "--norc", "-c", Self.script, "rootfs-config",
                                           distro.configPath, requireHook ? distro.libraryPath : ""],
                                  environment: env, workingDirectory: distro.directory)
        let output: ToolOutput
        do {
            output = try await runner.capture(command)
        } catch let failure as ToolFailure {
            let tail = failure.outputTail
            if tail.contains("rootfs: missing-lib") {
                throw RootfsError("distro '\(distro.name)' has no rootfs_lib.sh (looked for \(distro.libraryPath))",
                                  hint: "add rootfs_lib.sh defining build_rootfs() (see template/rootfs_lib.sh)")
            }
            if tail.contains("rootfs: no-build-rootfs") {
                throw RootfsError("\(distro.libraryPath) does not define build_rootfs()",
                                  hint: "define build_rootfs() { local rootfs_dir=$1; ... } in that file (see template/rootfs_lib.sh)")
            }
            if let died = tail.last(where: { $0.hasPrefix("ERROR: ") }) {
                throw RootfsError("\(distro.configPath) refuses: \(died.dropFirst("ERROR: ".count))",
                                  hint: "change the setting it names (in the environment or in that file)")
            }
            throw RootfsError("sourcing \(distro.configPath) failed (\(failure.status))",
                              hint: "run bash -x \(shellQuote(distro.configPath)) to see where it stops",
                              details: tail)
        }
        let fields = output.standardOutput.split(separator: "\0", omittingEmptySubsequences: false).map(String.init)
        guard let begin = fields.firstIndex(of: "__rootfs_begin") else {
            throw RootfsError("sourcing \(distro.configPath) printed no values (does it call exit?)")
        }
        var values: [String: String] = [:]
        var i = begin + 1
        while i + 1 < fields.count {
            values[fields[i]] = fields[i + 1]
            i += 2
        }
        values.removeValue(forKey: "CONFIG_DIR")
        var config = DistroConfig(values: values)
        let scan = HookToolScan.scan(distro, scriptDirectory: KataCallerEnvironment.scriptDirectory(of: distro),
                                     declared: Set(config.hostTools.flatMap { $0 }))
        config.undeclaredHostTools = scan.tools
        config.hostChanges = scan.hostChanges
        return config
    }
}
