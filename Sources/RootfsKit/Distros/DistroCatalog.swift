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
                            ? "no distros were found; searched: \(searchPath.map(\.path).joined(separator: ", "))"
                            : "known distros: \(known.joined(separator: ", ")) (see `rootfs list`)")
    }

    private func distroNames(in dir: String) -> [String] {
        guard let items = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return [] }
        return items.filter { !$0.hasPrefix(".") && FS.isRegularFile(dir + "/" + $0 + "/config.sh") }
    }
}

/// Where the project's own data (distros/, template/) lives.
public enum ProjectData {
    /// ROOTFS_DATA_DIR, else the checkout the executable was built in, else an installed share directory.
    public static func directory(environment: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        if let dir = environment["ROOTFS_DATA_DIR"], FS.isDirectory(dir + "/distros") { return FS.absolute(dir) }
        if var dir = FS.executableDirectory() {
            while dir != "/" && !dir.isEmpty {
                if FS.isDirectory(dir + "/distros") && FS.isDirectory(dir + "/template") { return dir }
                dir = FS.parent(dir)
            }
        }
        for dir in ["/usr/local/share/rootfs", "/usr/share/rootfs"] where FS.isDirectory(dir + "/distros") {
            return dir
        }
        return nil
    }
}
