import Foundation

/// A host program a hook runs without declaring it in HOST_TOOLS (Kata's hooks
/// declare nothing: Kata's own build images carry the tools).
public struct UndeclaredHostTool: Sendable, Equatable, Codable {
    /// Program names, any of which will do (`dnf` or `yum`).
    public var alternatives: [String]
    /// Where to get it: a Debian package, or why there is none.
    public var package: String
    /// The hook file that runs it.
    public var file: String

    /// `MAKEDEV (rootfs_lib.sh runs it; Debian package makedev)`.
    public var description: String {
        "\(alternatives.joined(separator: " or ")) (\(FS.basename(file)) runs it undeclared; \(package))"
    }
}

/// Finds the host programs a distro's hook uses without declaring them: a static
/// scan of the words of rootfs_lib.sh (and of the hook files it sources through
/// `${script_dir}`, `${CONFIG_DIR}`, `${LIB_SH}`, as Kata's debian sources
/// ubuntu's) against a table of the tools Kata's hooks are known to run. A word
/// counts outside comments, as a whole word (a path prefix such as `/sbin/` is
/// allowed), so `${DNF}` is not `dnf`. A distro without rootfs_lib.sh gets Kata's
/// default build_rootfs, which needs dnf or yum.
///
/// The scan can over-report (a tool named in a message) but never runs anything;
/// `rootfs list` shows the result and a host build without the tool stops before
/// anything is written, offering `--docker`.
public enum HookToolScan {
    struct Known {
        var words: [String]
        var alternatives: [String]
        var package: String
    }

    /// The tools Kata's rootfs-builder hooks run, and where a Debian host gets them.
    static let table: [Known] = [
        Known(words: ["mmdebstrap"], alternatives: ["mmdebstrap"], package: "Debian package mmdebstrap"),
        Known(words: ["debootstrap"], alternatives: ["debootstrap"], package: "Debian package debootstrap"),
        Known(words: ["apt", "apt-get"], alternatives: ["apt-get"], package: "Debian package apt"),
        Known(words: ["MAKEDEV"], alternatives: ["MAKEDEV"], package: "Debian package makedev"),
        Known(words: ["apk.static"], alternatives: ["apk.static"],
              package: "Alpine's apk-tools-static, not packaged in Debian 12: build with --docker"),
        Known(words: ["apk"], alternatives: ["apk", "apk.static"],
              package: "Alpine's apk-tools, not packaged in Debian 12: build with --docker"),
        Known(words: ["tdnf"], alternatives: ["tdnf"], package: "Azure Linux's tdnf, not packaged in Debian: build with --docker"),
        Known(words: ["dnf", "yum"], alternatives: ["dnf", "yum"], package: "Debian package dnf"),
        Known(words: ["zypper"], alternatives: ["zypper"], package: "Debian package zypper"),
        Known(words: ["yq", "get_package_version_from_kata_yaml"], alternatives: ["yq"], package: "Debian package yq"),
        Known(words: ["curl"], alternatives: ["curl"], package: "Debian package curl"),
        Known(words: ["wget"], alternatives: ["wget"], package: "Debian package wget"),
    ]

    /// What the scan found: the tools, and the commands that change this host.
    public struct Result: Sendable, Equatable {
        public var tools: [UndeclaredHostTool] = []
        /// For example "rootfs_lib.sh runs the host's `apt update`".
        public var hostChanges: [String] = []
    }

    /// Scans `distro`'s hook. `scriptDirectory` is Kata's `script_dir` (the directory
    /// holding the distro directories). `declared` are HOST_TOOLS' programs, left out.
    public static func scan(_ distro: Distro, scriptDirectory: String, declared: Set<String> = []) -> Result {
        var result = Result()
        guard FS.isRegularFile(distro.libraryPath) else {
            if !FS.exists(distro.libraryPath), declared.isDisjoint(with: ["dnf", "yum"]) {
                result.tools.append(UndeclaredHostTool(alternatives: ["dnf", "yum"], package: "Debian package dnf",
                                                       file: "Kata's default build_rootfs (no rootfs_lib.sh)"))
            }
            return result
        }
        var files: [String] = []
        var pending = [distro.libraryPath]
        while let file = pending.popLast(), files.count < 8 {
            if files.contains(file) { continue }
            files.append(file)
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { continue }
            let lines = text.split(separator: "\n").map { stripComment(String($0)) }
            pending += lines.compactMap { sourcedFile($0, distro: distro, scriptDirectory: scriptDirectory) }
            let words = Set(lines.flatMap(commandWords))
            for known in table where !known.words.allSatisfy({ !words.contains($0) }) {
                if !declared.isDisjoint(with: known.alternatives) { continue }
                if result.tools.contains(where: { $0.alternatives == known.alternatives }) { continue }
                result.tools.append(UndeclaredHostTool(alternatives: known.alternatives, package: known.package, file: file))
            }
            // A chroot or an mmdebstrap hook runs apt in the guest, not on this host.
            for line in lines where !line.contains("chroot") && !line.contains("hook") {
                let w = commandWords(line)
                for i in w.indices.dropLast() where ["apt", "apt-get"].contains(w[i])
                    && ["update", "install", "upgrade", "dist-upgrade", "remove"].contains(w[i + 1])
                {
                    let change = "\(FS.basename(file)) runs the host's `\(w[i]) \(w[i + 1])`"
                    if !result.hostChanges.contains(change) { result.hostChanges.append(change) }
                }
            }
        }
        // Two entries for one need (apk.static and apk): keep the more specific one.
        if result.tools.contains(where: { $0.alternatives == ["apk.static"] }) {
            result.tools.removeAll { $0.alternatives == ["apk", "apk.static"] }
        }
        return result
    }

    /// The line without a `#` comment (a `#` at the start or after a blank, outside quotes).
    static func stripComment(_ line: String) -> String {
        var quote: Character?
        var previous: Character = " "
        var out = ""
        for c in line {
            if let q = quote {
                if c == q { quote = nil }
            } else if c == "'" || c == "\"" {
                quote = c
            } else if c == "#" && (previous == " " || previous == "\t" || previous == ";") {
                break
            }
            out.append(c)
            previous = c
        }
        return out
    }

    /// Whole words: letters, digits, `_ . -`; a leading path (`/sbin/apk.static`) is dropped.
    static func commandWords(_ line: String) -> [String] {
        line.split(whereSeparator: { !($0.isLetter || $0.isNumber || "_.-/".contains($0)) }).compactMap { token in
            let word = token.split(separator: "/").last.map(String.init) ?? ""
            return word.isEmpty ? nil : word
        }
    }

    /// The file a `source X` / `. X` line names, with Kata's variables filled in, when it exists.
    static func sourcedFile(_ line: String, distro: Distro, scriptDirectory: String) -> String? {
        let trimmed = line.trimmingCharacters(in: .whitespaces)
        let rest: Substring
        if trimmed.hasPrefix("source ") { rest = trimmed.dropFirst(7) } else if trimmed.hasPrefix(". ") { rest = trimmed.dropFirst(2) } else { return nil }
        var path = rest.trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "\"'"))
        for (name, value) in [("script_dir", scriptDirectory), ("CONFIG_DIR", distro.directory),
                              ("LIB_SH", KataLib.libraryFileName), ("CONFIG_SH", KataLib.configFileName)] {
            path = path.replacingOccurrences(of: "${\(name)}", with: value).replacingOccurrences(of: "$\(name)", with: value)
        }
        if !path.hasPrefix("/") { path = distro.directory + "/" + path }
        return !path.contains("$") && FS.isRegularFile(path) ? path : nil
    }
}
