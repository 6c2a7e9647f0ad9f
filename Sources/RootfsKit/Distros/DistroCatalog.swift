import Foundation

/// One base OS: a directory holding `config.sh` and `rootfs_lib.sh`.
public struct Distro: Sendable, Equatable {
    public var name: String
    public var directory: String
    /// The search directory it was found in, and why that directory is searched.
    public var searchDirectory: SearchDirectory

    public var configPath: String { directory + "/config.sh" }
    public var libraryPath: String { directory + "/rootfs_lib.sh" }
    public var dockerfileTemplatePath: String { directory + "/Dockerfile.in" }
}

public struct SearchDirectory: Sendable, Equatable {
    public enum Origin: String, Sendable, Codable {
        case option = "--distros-dir"
        case environment = "ROOTFS_DISTROS_PATH"
        case builtIn = "built-in"
        /// Not a directory: `rootfs build --from-image` (ImageBuild.swift); `path` is the image.
        case image = "--from-image"
    }
    public var path: String
    public var origin: Origin
}

/// Finds distros in an ordered list of directories. The first directory that
/// has a distro wins; later ones with the same name are reported as shadowed.
public struct DistroCatalog: Sendable {
    public var searchPath: [SearchDirectory]

    public struct Entry: Sendable {
        public var distro: Distro
        /// Directories further down the search path that have a distro of the same name.
        public var shadowed: [Distro]
    }

    public init(searchPath: [SearchDirectory]) { self.searchPath = searchPath }

    /// `--distros-dir` directories first, then ROOTFS_DISTROS_PATH, then the built-in ones.
    public static func standard(distrosDirs: [String],
                                environment: [String: String] = ProcessInfo.processInfo.environment) -> DistroCatalog {
        var path = distrosDirs.map { SearchDirectory(path: FS.absolute($0), origin: .option) }
        if let extra = environment["ROOTFS_DISTROS_PATH"] {
            path += extra.split(separator: ":").map { SearchDirectory(path: FS.absolute(String($0)), origin: .environment) }
        }
        if let builtIn = ProjectData.directory(environment: environment) {
            path.append(SearchDirectory(path: builtIn + "/distros", origin: .builtIn))
        }
        var seen = Set<String>()
        return DistroCatalog(searchPath: path.filter { seen.insert($0.path).inserted })
    }

    /// Every distro found, sorted by name.
    public func entries() -> [Entry] {
        var byName: [String: Entry] = [:]
        var order: [String] = []
        for dir in searchPath {
            for name in distroNames(in: dir.path) {
                let distro = Distro(name: name, directory: dir.path + "/" + name, searchDirectory: dir)
                if byName[name] == nil {
                    byName[name] = Entry(distro: distro, shadowed: [])
                    order.append(name)
                } else {
                    byName[name]!.shadowed.append(distro)
                }
            }
        }
        return order.sorted().compactMap { byName[$0] }
    }

    /// The distro called `name`, or an error that lists the known ones.
    public func find(_ name: String) throws -> Distro {
        // '' would name the search directory itself (dir + "/"), '.' and '..' it or its parent.
        guard !name.isEmpty, name != ".", name != ".." else {
            throw RootfsError("'\(name)' is not a distro name", hint: "`rootfs list` shows the known distros")
        }
        for dir in searchPath {
            let candidate = dir.path + "/" + name
            guard FS.isDirectory(candidate), !name.contains("/"), !name.hasPrefix(".") else { continue }
            guard FS.isRegularFile(candidate + "/config.sh") else {
                throw RootfsError("distro '\(name)' at \(candidate) has no config.sh",
                                  hint: "a distro directory needs config.sh and rootfs_lib.sh; `rootfs new \(name)` scaffolds both")
            }
            return Distro(name: name, directory: candidate, searchDirectory: dir)
        }
        let known = entries().map(\.distro.name)
        throw RootfsError("unknown distro '\(name)'",
                          hint: known.isEmpty
                            ? "no distros were found; searched: \(Self.searchedText(searchPath))"
                            : "known distros: \(known.joined(separator: ", ")) (see `rootfs list`)")
    }

    /// The search path as a message shows it; without a built-in directory, where it was looked for
    /// (ROOTFS_DATA_DIR, the install layout, a checkout) and how to name one.
    public static func searchedText(_ searchPath: [SearchDirectory]) -> String {
        var parts = searchPath.map(\.path)
        if !searchPath.contains(where: { $0.origin == .builtIn }) {
            parts.append("no built-in distros/ in \(ProjectData.searchedDescription()) (set ROOTFS_DATA_DIR to the directory holding distros/ and template/, or pass --distros-dir DIR)")
        }
        return parts.joined(separator: ", ")
    }

    private func distroNames(in dir: String) -> [String] {
        guard let items = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return [] }
        return items.filter { !$0.hasPrefix(".") && FS.isRegularFile(dir + "/" + $0 + "/config.sh") }
    }
}

/// Where the project's own data (distros/, template/) and the reference agent live: a checkout,
/// or the install layout scripts/install.sh writes (docs/CLI.md, "Installing"):
///
///     PREFIX/bin/rootfs
///     PREFIX/libexec/rootfs/rootfs-agent[-ARCH]
///     PREFIX/share/rootfs/{distros,template,commit}
///
/// Everything is found from the executable's real path (links resolved), so a linked or
/// copied-with-its-tree binary works from any working directory.
public enum ProjectData {
    /// Where distros/ and template/ are looked for, in order: ROOTFS_DATA_DIR, the install
    /// layout around the executable, the checkout it was built in, the system share directories.
    public static func candidates(environment: [String: String] = ProcessInfo.processInfo.environment,
                                  executableDirectory: String? = FS.executableDirectory()) -> [String] {
        var dirs: [String] = []
        if let dir = environment["ROOTFS_DATA_DIR"], !dir.isEmpty { dirs.append(FS.absolute(dir)) }
        if let exe = executableDirectory {
            dirs.append(FS.parent(exe) + "/share/rootfs")
            var dir = exe
            while dir != "/" && !dir.isEmpty {
                dirs.append(dir)
                dir = FS.parent(dir)
            }
        }
        return dirs + ["/usr/local/share/rootfs", "/usr/share/rootfs"]
    }

    /// The first candidate holding distros/ (a checkout: distros/ and template/).
    public static func directory(environment: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        let exe = FS.executableDirectory()
        for dir in candidates(environment: environment, executableDirectory: exe) {
            let isAncestor = exe.map { $0 == dir || $0.hasPrefix(dir + "/") } ?? false
            // Above the executable only a checkout counts (distros/ beside template/), not any distros/.
            if FS.isDirectory(dir + "/distros") && (!isAncestor || FS.isDirectory(dir + "/template")) { return dir }
        }
        return nil
    }

    /// What was searched, for the message when nothing was found.
    public static func searchedDescription(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        let exe = FS.executableDirectory()
        var parts: [String] = []
        if let dir = environment["ROOTFS_DATA_DIR"], !dir.isEmpty { parts.append("ROOTFS_DATA_DIR=\(dir)") }
        else { parts.append("ROOTFS_DATA_DIR (not set)") }
        if let exe {
            parts.append(FS.parent(exe) + "/share/rootfs")
            parts.append("a checkout above \(exe)")
        }
        parts += ["/usr/local/share/rootfs", "/usr/share/rootfs"]
        return parts.joined(separator: ", ")
    }

    /// Where the reference agents are looked for (InstallLayout, in RootfsSupport for the writers).
    public static func agentDirectories() -> [String] { InstallLayout.agentDirectories() }

    /// The reference agent called `name` (rootfs-agent, rootfs-agent-aarch64...), if found.
    public static func agent(named name: String) -> String? { InstallLayout.agent(named: name) }

    /// The commit this rootfs was built from: the checkout's HEAD when it runs from a checkout
    /// (as `--version` says), else the `commit` file scripts/install.sh records in
    /// share/rootfs, else "unknown" with what was missing.
    public static func buildCommit(environment: [String: String] = ProcessInfo.processInfo.environment) async -> RootfsVersion.BuildCommit {
        if RootfsVersion.checkout() != nil {
            let commit = await RootfsVersion.commit()
            return .init(commit: commit, source: commit == "unknown" ? "checkout (git did not answer)" : "checkout")
        }
        if let exe = FS.executableDirectory() {
            let file = FS.parent(exe) + "/share/rootfs/commit"
            if let data = FileManager.default.contents(atPath: file),
               let text = String(data: data, encoding: .utf8)?.trimmingCharacters(in: .whitespacesAndNewlines),
               !text.isEmpty, text.count <= 64, text.unicodeScalars.allSatisfy({ $0.isASCII && (CharacterSet.alphanumerics.contains($0) || "+-._".unicodeScalars.contains($0)) }) {
                return .init(commit: text, source: "install (\(file))")
            }
        }
        return .init(commit: "unknown", source: "unknown: not run from a git checkout, and no share/rootfs/commit beside the executable")
    }
}
