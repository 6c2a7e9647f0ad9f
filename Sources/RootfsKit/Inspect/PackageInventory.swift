import Foundation

/// One package installed in a guest tree, as its package manager's database records it.
public struct InstalledPackage: Sendable, Codable, Equatable, Comparable {
    public var name: String
    public var version: String
    public var architecture: String
    /// The installed size the database records, in bytes (dpkg records KiB; nil when unknown).
    public var installedBytes: Int64?

    public init(name: String, version: String, architecture: String, installedBytes: Int64? = nil) {
        self.name = name
        self.version = version
        self.architecture = architecture
        self.installedBytes = installedBytes
    }

    public static func < (a: Self, b: Self) -> Bool {
        (a.name, a.architecture, a.version) < (b.name, b.architecture, b.version)
    }
}

/// The packages of a guest tree, read from dpkg's, rpm's or apk's database inside it.
public struct PackageInventory: Sendable, Codable, Equatable {
    public enum Database: String, Sendable, Codable { case dpkg, rpm, apk, none }
    public var database: Database
    /// Sorted by name, then architecture.
    public var packages: [InstalledPackage]
    /// Why the list may be incomplete (e.g. an rpm database but no rpm on this host).
    public var note: String?

    public static let dpkgStatus = "/var/lib/dpkg/status"
    public static let apkInstalled = "/lib/apk/db/installed"
    /// Where RPM databases live in a guest (docs/DISTROS.md: the fedora hook uses the first).
    public static let rpmDatabases = ["/usr/lib/sysimage/rpm", "/var/lib/rpm"]

    public init(database: Database, packages: [InstalledPackage], note: String? = nil) {
        self.database = database
        self.packages = packages.sorted()
        self.note = note
    }

    /// Reads the tree's package database; paths are resolved inside the tree.
    public static func read(tree root: String, runner: ProcessRunner = ProcessRunner()) async throws -> PackageInventory {
        let guest = GuestTree(root: root)
        if let status = guest.hostPath(resolving: dpkgStatus), FS.isRegularFile(status) {
            var packages: [InstalledPackage] = []
            try forEachParagraph(ofFile: status) { if let p = try dpkgPackage($0) { packages.append(p) } }
            return PackageInventory(database: .dpkg, packages: packages)
        }
        if let installed = guest.hostPath(resolving: apkInstalled), FS.isRegularFile(installed) {
            var packages: [InstalledPackage] = []
            try forEachParagraph(ofFile: installed) { if let p = apkPackage($0) { packages.append(p) } }
            return PackageInventory(database: .apk, packages: packages)
        }
        for dbpath in rpmDatabases {
            guard let host = guest.hostPath(resolving: dbpath), FS.isDirectory(host),
                  !FS.isMissingOrEmptyDirectory(host) else { continue }
            guard ProcessRunner.which("rpm") != nil else {
                return PackageInventory(database: .rpm, packages: [],
                                        note: "the tree has an RPM database at \(dbpath) but this host has no rpm to read it (apt-get install rpm)")
            }
            let output = try await runner.capture(rpmQuery(tree: root, dbpath: dbpath))
            return PackageInventory(database: .rpm, packages: parseRpmQuery(output.standardOutput))
        }
        return PackageInventory(database: .none, packages: [], note: "no dpkg, apk or rpm database in the tree")
    }

    /// The rpm query listing every package: name, [epoch:]version-release, arch, size (tab-separated).
    public static func rpmQuery(tree: String, dbpath: String) -> ToolCommand {
        ToolCommand("rpm", ["--root", tree, "--dbpath", dbpath, "-qa", "--qf",
                            "%{NAME}\\t%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\\t%{ARCH}\\t%{SIZE}\\n"])
    }

    static func readText(_ path: String) throws -> String {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw RootfsError("cannot read \(path): \(FS.errnoText())")
        }
        return String(decoding: data, as: UTF8.self)
    }

    /// Paragraphs of `Key: value` fields (dpkg's status file); continuation lines are dropped.
    static func paragraphs(_ text: String, separator: Character = ":") -> [[String: String]] {
        var parser = ParagraphParser(separator: separator.asciiValue ?? UInt8(ascii: ":"))
        var result: [[String: String]] = []
        parser.feed(Array(text.utf8)) { result.append($0) }
        parser.finish { result.append($0) }
        return result
    }

    /// The same, streamed from a file in 1 MiB chunks: a 1 GB status file is never held
    /// whole (memory: one chunk, one line of at most `ParagraphParser.lineLimit`, one paragraph).
    static func forEachParagraph(ofFile path: String, _ body: ([String: String]) throws -> Void) throws {
        let file = try OwnedFileDescriptor(path: path, flags: O_RDONLY | O_CLOEXEC)
        var parser = ParagraphParser(separator: UInt8(ascii: ":"))
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = try chunk.withUnsafeMutableBytes { try file.read(into: $0) }
            if n == 0 { break }
            try parser.feed(chunk[..<n], body)
        }
        try parser.finish(body)
    }

    /// One dpkg status paragraph as a package (nil for not-installed and config-files).
    static func dpkgPackage(_ fields: [String: String]) throws -> InstalledPackage? {
        guard let name = fields["Package"], let status = fields["Status"] else { return nil }
        let state = status.split(separator: " ").last.map(String.init) ?? ""
        guard !["not-installed", "config-files"].contains(state) else { return nil }
        let bytes = try fields["Installed-Size"].flatMap { Int64($0) }.map { kib -> Int64 in
            let (bytes, overflow) = kib.multipliedReportingOverflow(by: 1024)
            guard !overflow, kib >= 0 else {
                throw RootfsError("the dpkg status file says package \(name) has an Installed-Size of \(kib) KiB, which no package has",
                                  hint: "the tree's var/lib/dpkg/status is corrupt")
            }
            return bytes
        }
        return InstalledPackage(name: name, version: fields["Version"] ?? "", architecture: fields["Architecture"] ?? "",
                                installedBytes: bytes)
    }

    static func apkPackage(_ fields: [String: String]) -> InstalledPackage? {
        guard let name = fields["P"] else { return nil }
        return InstalledPackage(name: name, version: fields["V"] ?? "", architecture: fields["A"] ?? "",
                                installedBytes: fields["I"].flatMap { Int64($0) })
    }

    /// Installed packages of a dpkg status file (every state but not-installed and config-files).
    /// `Installed-Size` is in KiB: a value whose bytes do not fit in 63 bits is a clear error (not a trap).
    public static func parseDpkgStatus(_ text: String) throws -> [InstalledPackage] {
        try paragraphs(text).compactMap(dpkgPackage).sorted()
    }

    /// apk's installed database: paragraphs of one-letter fields (P name, V version, A arch, I size).
    public static func parseApkInstalled(_ text: String) -> [InstalledPackage] {
        paragraphs(text).compactMap(apkPackage).sorted()
    }

    /// The files apk's installed database lists per package (F: directory, R: file in it).
    static func apkFiles(_ text: String) -> [String: [String]] {
        var files: [String: [String]] = [:]
        var package: String?
        var directory = ""
        for raw in text.split(separator: "\n") {
            let line = String(raw)
            if line.hasPrefix("P:") { package = String(line.dropFirst(2)); directory = "" }
            else if line.hasPrefix("F:") { directory = String(line.dropFirst(2)) }
            else if line.hasPrefix("R:"), let package {
                files[package, default: []].append("/" + (directory.isEmpty ? "" : directory + "/") + line.dropFirst(2))
            }
        }
        return files
    }

    public static func parseRpmQuery(_ text: String) -> [InstalledPackage] {
        text.split(separator: "\n").compactMap { line in
            let f = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            guard f.count >= 4, !f[0].isEmpty, f[0] != "gpg-pubkey" else { return nil }
            return InstalledPackage(name: f[0], version: f[1], architecture: f[2], installedBytes: Int64(f[3]))
        }.sorted()
    }
}

/// `Key: value` paragraphs from bytes fed in any pieces. A line longer than `lineLimit`
/// keeps its first `lineLimit` bytes (no field rootfs reads is longer), so memory stays
/// bounded whatever the file holds.
struct ParagraphParser {
    static let lineLimit = 64 << 10
    let separator: UInt8
    private var line: [UInt8] = []
    private var current: [String: String] = [:]

    init(separator: UInt8) { self.separator = separator }

    mutating func feed<C: Collection>(_ bytes: C, _ body: ([String: String]) throws -> Void) rethrows where C.Element == UInt8 {
        for byte in bytes {
            if byte == UInt8(ascii: "\n") {
                try endLine(body)
            } else if line.count < Self.lineLimit {
                line.append(byte)
            }
        }
    }

    mutating func finish(_ body: ([String: String]) throws -> Void) rethrows {
        if !line.isEmpty { try endLine(body) }
        if !current.isEmpty { try body(current); current = [:] }
    }

    private mutating func endLine(_ body: ([String: String]) throws -> Void) rethrows {
        defer { line.removeAll(keepingCapacity: true) }
        let blank: (UInt8) -> Bool = { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") || $0 == UInt8(ascii: "\r") }
        if line.allSatisfy(blank) {
            if !current.isEmpty { try body(current); current = [:] }
            return
        }
        if line.first == UInt8(ascii: " ") || line.first == UInt8(ascii: "\t") { return }
        guard let colon = line.firstIndex(of: separator) else { return }
        let key = String(decoding: line[..<colon], as: UTF8.self)
        let value = String(decoding: line[(colon + 1)...], as: UTF8.self).trimmingCharacters(in: .whitespaces)
        if current[key] == nil { current[key] = value }
    }
}
