import Foundation

/// Where the bytes of a rootfs go: the largest directories and packages
/// (`rootfs size`), from a rootfs directory or a tar/cpio archive of one.
public struct SizeReport: Sendable, Codable, Equatable {
    public struct Directory: Sendable, Codable, Equatable {
        public var path: String
        /// Regular files below it, each hard-linked file counted once.
        public var bytes: Int64
        public var files: Int
    }
    public struct Package: Sendable, Codable, Equatable {
        public var name: String
        public var version: String
        public var bytes: Int64
        public var files: Int?
    }

    public var source: String
    public var totalBytes: Int64
    public var files: Int
    public var depth: Int
    public var directories: [Directory]
    public var packageDatabase: String
    /// How package sizes were found: "files" (the package's file list summed in the tree) or "database".
    public var packageSizes: String?
    public var packages: [Package]
    public var note: String?

    /// Builds the report for a rootfs directory or an archive; `top` limits both lists.
    public static func make(path: String, top: Int = 15, depth: Int = 3,
                            runner: ProcessRunner = ProcessRunner()) async throws -> SizeReport {
        let index: TreeIndex
        let inventory: PackageInventory
        if FS.isDirectory(path) {
            index = try TreeIndex(directory: path)
            inventory = try await PackageInventory.read(tree: path, runner: runner)
        } else if try FS.isRegularFile(path) || ImageReference.parse(path) != nil {
            // An image (oci:, docker-archive:) is read as the tree its layers make.
            index = FS.isRegularFile(path) ? try TreeIndex(archive: path) : try TreeIndex(source: TreeSource.open(path))
            inventory = try archiveInventory(index)
        } else {
            throw RootfsError("\(path) does not exist", hint: "give a rootfs directory or a tar/cpio archive of one")
        }
        return make(index: index, inventory: inventory, source: path, top: top, depth: depth)
    }

    /// The report for any image ImageOpener opened (a disk, an erofs, squashfs or ISO image...),
    /// named as the user gave it: a directory (or an extracted file system) and an archive as
    /// above, anything else from its canonical walk (ext4 read in process).
    public static func make(image: OpenedImage, top: Int = 15, depth: Int = 3,
                            runner: ProcessRunner = ProcessRunner()) async throws -> SizeReport {
        var report: SizeReport
        switch image.source {
        case .directory(let path), .archive(let path):
            report = try await make(path: path, top: top, depth: depth, runner: runner)
        default:
            let index = try TreeIndex(source: image.source)
            report = make(index: index, inventory: try archiveInventory(index), source: image.name, top: top, depth: depth)
        }
        report.source = image.name
        return report
    }

    /// The package database found in an index of a tree that is not a host directory.
    static func archiveInventory(_ index: TreeIndex) throws -> PackageInventory {
        if let status = index.content(of: PackageInventory.dpkgStatus) {
            return PackageInventory(database: .dpkg, packages: try PackageInventory.parseDpkgStatus(status))
        } else if let installed = index.content(of: PackageInventory.apkInstalled) {
            return PackageInventory(database: .apk, packages: PackageInventory.parseApkInstalled(installed))
        } else if PackageInventory.rpmDatabases.contains(where: { index.isDirectory($0) }) {
            return PackageInventory(database: .rpm, packages: [],
                                    note: "an RPM database cannot be read inside an archive or disk: extract it (rootfs cp IMAGE:/ DIR) and run `rootfs size DIR`")
        } else {
            return PackageInventory(database: .none, packages: [], note: "no dpkg, apk or rpm database found")
        }
    }

    static func make(index: TreeIndex, inventory: PackageInventory, source path: String, top: Int, depth: Int) -> SizeReport {

        // Directories: every regular file counts in each of its ancestors (guest paths as bytes:
        // two names differing only in a byte that is not UTF-8 stay two; shown with \xNN).
        var totals: [[UInt8]: (bytes: Int64, files: Int)] = [:]
        for (file, size) in index.files {
            var dir = file
            while dir != [47], let slash = dir.lastIndex(of: 47) {
                dir = slash == 0 ? [47] : Array(dir[..<slash])
                totals[dir, default: (0, 0)].bytes += size
                totals[dir, default: (0, 0)].files += 1
            }
        }
        let directories = totals.filter { $0.key != [47] && $0.key.split(separator: 47).count <= depth }
            .map { (key: $0.key, entry: Directory(path: displayPath($0.key), bytes: $0.value.bytes, files: $0.value.files)) }
            .sorted { $0.entry.bytes != $1.entry.bytes ? $0.entry.bytes > $1.entry.bytes : $0.key.lexicographicallyPrecedes($1.key) }
            .map(\.entry)

        // Packages: the files each lists, summed in the tree; else the database's own figure.
        var packages: [Package] = []
        var method: String?
        let lists = index.packageFileLists(database: inventory.database)
        if !lists.isEmpty {
            method = "files"
            var counted = Set<[UInt8]>()
            for p in inventory.packages {
                guard let list = lists[p.name] else { continue }
                var bytes: Int64 = 0
                var files = 0
                for listed in list {
                    guard let real = index.resolve(Array(listed.utf8), followLast: false), let size = index.files[real],
                          counted.insert(real).inserted else { continue }
                    bytes += size
                    files += 1
                }
                packages.append(Package(name: p.name, version: p.version, bytes: bytes, files: files))
            }
        } else if inventory.packages.contains(where: { $0.installedBytes != nil }) {
            method = "database"
            packages = inventory.packages.map { Package(name: $0.name, version: $0.version, bytes: $0.installedBytes ?? 0, files: nil) }
        }
        packages.sort { ($0.bytes, $1.name) > ($1.bytes, $0.name) }

        return SizeReport(source: path, totalBytes: index.files.values.reduce(0, +), files: index.files.count, depth: depth,
                          directories: Array(directories.prefix(top)), packageDatabase: inventory.database.rawValue,
                          packageSizes: method, packages: Array(packages.prefix(top)), note: inventory.note)
    }

    /// The report for people.
    public var text: String {
        func size(_ b: Int64) -> String { formatBytes(b).leftPadded(to: 10) }
        var lines = ["\(source): \(formatBytes(totalBytes)) in \(files) files"]
        lines.append("")
        lines.append("largest directories (everything below them, up to depth \(depth)):")
        lines += directories.map { "  \(size($0.bytes))  \($0.path)  (\($0.files) files)" }
        lines.append("")
        switch packageSizes {
        case "files": lines.append("largest packages (\(packageDatabase); their files as found in the tree):")
        case "database": lines.append("largest packages (\(packageDatabase); installed size its database records):")
        default: lines.append("packages: \(note ?? "no sizes known (\(packageDatabase))")")
        }
        lines += packages.map { "  \(size($0.bytes))  \($0.name) \($0.version)" }
        return lines.joined(separator: "\n")
    }
}

extension String {
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: " ", count: width - count) + self
    }
}

/// The files, links and directories of a tree (guest paths, as bytes: a name that is not
/// UTF-8 is its own key), from a directory or an archive.
struct TreeIndex {
    /// Regular files -> size; a hard-linked file's size is counted at its first name only.
    var files: [[UInt8]: Int64] = [:]
    var symlinks: [[UInt8]: [UInt8]] = [:]
    var directories: Set<[UInt8]> = [[47]]
    /// The contents of the package-database files, by guest path.
    var contents: [[UInt8]: String] = [:]
    private var root: String?

    /// The largest package-database file of an archive or image read into memory (a directory's
    /// is streamed). Debian's dpkg/status is a few MiB; a crafted tar's 10 GiB "status" was read
    /// whole before a line was parsed.
    static let databaseFileLimit: Int64 = 64 << 20

    static func requireDatabaseSize(_ size: Int64, _ path: [UInt8], in tree: String) throws {
        guard size > databaseFileLimit else { return }
        throw RootfsError("\(tree): the package database file \(displayPath(path)) is \(size) bytes, more than the \(databaseFileLimit >> 20) MiB a package database holds",
                          hint: "this is not a package database rootfs can read; check where the tree came from")
    }

    static func isDatabaseFile(_ bytes: [UInt8]) -> Bool {
        let path = String(decoding: bytes, as: UTF8.self)  // the names matched are ASCII
        return path.hasSuffix("/dpkg/status") || (path.contains("/dpkg/info/") && path.hasSuffix(".list"))
            || path.hasSuffix("/apk/db/installed")
    }

    /// "/" + a tree item's relative path ("." is the root).
    private static func guestPath(_ relative: [UInt8]) -> [UInt8] { relative == [46] ? [47] : [47] + relative }

    init(directory: String) throws {
        root = FS.absolute(directory)
        var seen = Set<HardLinkKey>()
        try TreeWalker(root: directory).walk { item in
            let path = Self.guestPath(item.path)
            switch item.fileType {
            case S_IFDIR: directories.insert(path)
            case S_IFLNK: symlinks[path] = item.linkTarget ?? []
            case S_IFREG:
                let st = item.stat
                let first = st.st_nlink < 2 || seen.insert(HardLinkKey(dev: UInt64(st.st_dev), ino: UInt64(st.st_ino))).inserted
                files[path] = first ? Int64(st.st_size) : 0
            default: break
            }
        }
    }

    init(archive: String) throws {
        let reader = try ArchiveReader(path: archive)
        while true {
            guard let (peek, _) = try reader.next() else { break }
            var path = peek.pathBytes[...]
            while path.starts(with: [46, 47]) { path = path.dropFirst(2) }
            while path.first == 47 { path = path.dropFirst() }
            while path.last == 47 { path = path.dropLast() }
            let guest: [UInt8] = path.isEmpty || path.elementsEqual([46]) ? [47] : [47] + path
            switch peek.fileType {
            case 0o040000: directories.insert(guest)
            case 0o120000: symlinks[guest] = peek.symlinkBytes ?? []
            case 0o100000:
                files[guest] = peek.hardlinkBytes == nil ? peek.size : 0
                if Self.isDatabaseFile(guest) {
                    try Self.requireDatabaseSize(peek.size, guest, in: archive)
                    contents[guest] = String(decoding: try reader.readData(of: displayPath(guest)), as: UTF8.self)
                }
            default: break
            }
        }
    }

    /// Any tree source (a container image): the same index from its canonical walk.
    init(source: TreeSource) throws {
        try source.walk { item in
            let path = Self.guestPath(item.path)
            switch item.fileType {
            case 0o040000: directories.insert(path)
            case 0o120000: symlinks[path] = item.linkTarget ?? []
            case FileType.reg:
                files[path] = item.hardLinkTo == nil ? item.size : 0
                if Self.isDatabaseFile(path) && item.size > 0 {
                    try Self.requireDatabaseSize(item.size, path, in: source.description)
                    var data: [UInt8] = []
                    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 16)
                    defer { buffer.deallocate() }
                    try item.copyContent(buffer: buffer) { data += $0 }
                    contents[path] = String(decoding: data, as: UTF8.self)
                }
            default: break
            }
        }
    }

    func isDirectory(_ guestPath: String) -> Bool {
        resolve(Array(guestPath.utf8)).map { directories.contains($0) } ?? false
    }

    /// A database file's text, the guest path resolved inside the tree.
    func content(of guestPath: String) -> String? { content(of: Array(guestPath.utf8)) }

    func content(of guestPath: [UInt8]) -> String? {
        guard let real = resolve(guestPath) else { return nil }
        if let root {
            guard files[real] != nil else { return nil }
            return (try? PackageInventory.readText(root + String(decoding: real, as: UTF8.self)))
        }
        return contents[real]
    }

    /// Resolves a guest path through the tree's own links (never the host's), as bytes.
    func resolve(_ path: [UInt8], followLast: Bool = true) -> [UInt8]? {
        var pending = path.split(separator: 47).map(Array.init)
        var resolved: [[UInt8]] = []
        var hops = 0
        while !pending.isEmpty {
            let name = pending.removeFirst()
            if name == [46] || name.isEmpty { continue }
            if name == [46, 46] { _ = resolved.popLast(); continue }
            let candidate = [47] + Array((resolved + [name]).joined(separator: [47]))
            if let target = symlinks[candidate], followLast || !pending.isEmpty {
                hops += 1
                if hops > 40 { return nil }
                if target.first == 47 { resolved = [] }
                pending = target.split(separator: 47).map(Array.init) + pending
                continue
            }
            resolved.append(name)
        }
        return [47] + Array(resolved.joined(separator: [47]))
    }

    /// Package name -> the paths it installed (dpkg's info/*.list, apk's R: lines).
    func packageFileLists(database: PackageInventory.Database) -> [String: [String]] {
        switch database {
        case .dpkg:
            var lists: [String: [String]] = [:]
            let infoDir = resolve(Array("/var/lib/dpkg/info".utf8)) ?? Array("/var/lib/dpkg/info".utf8)
            let names: [String]
            if let root {
                names = ((try? FileManager.default.contentsOfDirectory(atPath: root + String(decoding: infoDir, as: UTF8.self))) ?? []).filter { $0.hasSuffix(".list") }
            } else {
                names = contents.keys.filter { $0.starts(with: infoDir + [47]) && !$0[(infoDir.count + 1)...].contains(47) }
                    .map { String(decoding: $0[(infoDir.count + 1)...], as: UTF8.self) }.filter { $0.hasSuffix(".list") }
            }
            for name in names {
                guard let text = content(of: infoDir + [47] + Array(name.utf8)) else { continue }
                let package = String(name.dropLast(5).prefix { $0 != ":" })
                lists[package, default: []] += text.split(separator: "\n").map(String.init)
            }
            return lists
        case .apk:
            return content(of: PackageInventory.apkInstalled).map(PackageInventory.apkFiles) ?? [:]
        case .rpm, .none:
            return [:]
        }
    }
}
