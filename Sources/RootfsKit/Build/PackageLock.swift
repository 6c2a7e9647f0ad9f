import Foundation

/// A lock file for a package set (`rootfs build --lock FILE` writes it, `--locked FILE` installs
/// exactly it). One text format (docs/CACHE.md, "Lock files"):
///
///     # comments and blank lines are ignored
///     rootfs-lock 1
///     distro debian
///     os-version trixie
///     architecture x86_64
///     database dpkg
///     package apt 3.0.3
///     package base-files 13.8
///
/// Every installed package, sorted, with the exact version its database records (the manifest's
/// list). A lock file is untrusted input: names and versions become package manager arguments,
/// so each is checked (no leading '-', no blanks or control bytes, a small alphabet) and a bad
/// line is an error naming the file and the line.
public struct PackageLock: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public var name: String
        public var version: String
    }

    public var distro: String
    public var osVersion: String
    public var architecture: String
    public var database: PackageInventory.Database
    public var packages: [Entry]

    public static let header = "rootfs-lock 1"
    /// Limits on what a lock file may hold: far above any real guest, small enough to refuse a hostile file early.
    static let maxBytes = 16 << 20
    static let maxField = 256

    public init(distro: String, osVersion: String, architecture: String, database: PackageInventory.Database, packages: [Entry]) {
        self.distro = distro
        self.osVersion = osVersion
        self.architecture = architecture
        self.database = database
        self.packages = packages
    }

    /// The lock of a build's tree, from its package database.
    public init(inventory: PackageInventory, distro: String, osVersion: String, architecture: String) throws {
        guard inventory.database != .none, !inventory.packages.isEmpty else {
            throw RootfsError("--lock: the tree has no package database to lock (\(inventory.note ?? inventory.database.rawValue))",
                              hint: "a lock file lists the packages dpkg, rpm or apk installed; this distro's tree has none")
        }
        var seen = Set<String>()
        let entries = inventory.packages.compactMap { p -> Entry? in
            // Another architecture's copy of a Multi-Arch package has the same name and version: one line.
            seen.insert(p.name).inserted ? Entry(name: p.name, version: p.version) : nil
        }
        self.init(distro: distro, osVersion: osVersion, architecture: architecture, database: inventory.database, packages: entries)
    }

    /// The file's text.
    public var text: String {
        var lines = ["# rootfs lock file: every package of the build with its exact version.",
                     "# rootfs build \(distro) --locked FILE installs exactly these versions.",
                     Self.header, "distro \(distro)"] + (osVersion.isEmpty ? [] : ["os-version \(osVersion)"])
            + ["architecture \(architecture)", "database \(database.rawValue)"]
        lines += packages.map { "package \($0.name) \($0.version)" }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Writes the lock to a temporary name beside `path` and renames it.
    public func write(to path: String) throws {
        try FS.makeDirectories(FS.parent(path))
        let temporary = FS.siblingTemporaryPath(for: path)
        guard FileManager.default.createFile(atPath: temporary, contents: Data(text.utf8)) else {
            throw RootfsError("cannot write the lock file \(path): \(FS.errnoText())", hint: "check that its directory is writable (--lock)")
        }
        do { try FS.rename(temporary, to: path) } catch { FS.remove(temporary); throw error }
    }

    /// Reads and checks a lock file (`--locked FILE`).
    public static func read(_ path: String) throws -> PackageLock {
        guard FS.isRegularFile(path) else {
            throw RootfsError("--locked \(path): no such file", hint: "write one with rootfs build --lock \(path)")
        }
        guard FS.fileSize(path) <= Int64(maxBytes) else {
            throw RootfsError("--locked \(path) is larger than \(maxBytes >> 20) MiB: not a lock file", hint: "write one with rootfs build --lock FILE")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw RootfsError("--locked \(path) cannot be read: \(FS.errnoText())")
        }
        return try parse([UInt8](data), source: path)
    }

    public static func parse(_ bytes: [UInt8], source: String) throws -> PackageLock {
        func bad(_ line: Int, _ what: String) -> RootfsError {
            RootfsError("--locked \(source), line \(line): \(what)",
                        hint: "a lock file is what rootfs build --lock writes (docs/CACHE.md, \"Lock files\"); write a new one")
        }
        guard let text = String(validating: bytes, as: UTF8.self) else { throw bad(1, "the file is not UTF-8 text") }
        var fields: [String: String] = [:]
        var packages: [Entry] = []
        var names = Set<String>()
        var sawHeader = false
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let number = index + 1
            let line = raw.hasSuffix("\r") ? raw.dropLast() : raw
            if line.isEmpty || line.hasPrefix("#") { continue }
            if line.unicodeScalars.contains(where: { ($0.value < 0x20 && $0 != "\t") || (0x7F ... 0x9F).contains($0.value) }) {
                throw bad(number, "a control character")
            }
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            guard sawHeader else {
                guard line == header else { throw bad(number, "the first line is not '\(header)'") }
                sawHeader = true
                continue
            }
            switch (words.first, words.count) {
            case ("package", 3):
                let (name, version) = (words[1], words[2])
                guard isName(name) else { throw bad(number, "'\(SettingValue.printable(name))' is not a package name") }
                guard isVersion(version) else {
                    throw bad(number, "'\(SettingValue.printable(version))' is not a version of \(name)")
                }
                guard names.insert(name).inserted else { throw bad(number, "\(name) is listed twice") }
                packages.append(Entry(name: name, version: version))
            case (let key?, 2) where ["distro", "os-version", "architecture", "database"].contains(key):
                guard fields[key] == nil else { throw bad(number, "\(key) is given twice") }
                // A release is read as a version is (Debian's 12.4~rc1 has a '~'); the others as names.
                guard key == "os-version" ? isVersion(words[1]) : isName(words[1]) else {
                    throw bad(number, "'\(SettingValue.printable(words[1]))' is not a \(key)")
                }
                fields[key] = words[1]
            default:
                throw bad(number, "'\(SettingValue.printable(String(line.prefix(80))))' is not a lock line (package NAME VERSION, distro, os-version, architecture, database)")
            }
        }
        guard sawHeader else { throw bad(1, "the file is empty: no '\(header)' line") }
        guard let distro = fields["distro"], let arch = fields["architecture"], let db = fields["database"] else {
            throw bad(1, "distro, architecture and database must each be given")
        }
        guard let database = PackageInventory.Database(rawValue: db), database != .none else {
            throw bad(1, "database \(db) is not dpkg, rpm or apk")
        }
        guard !packages.isEmpty else { throw bad(1, "no package lines") }
        return PackageLock(distro: distro, osVersion: fields["os-version"] ?? "", architecture: arch, database: database, packages: packages)
    }

    /// Package names: letters, digits and . + _ - :, not starting with '-' or '.'.
    static func isName(_ s: String) -> Bool {
        guard let first = s.unicodeScalars.first, s.utf8.count <= maxField, first != "-", first != "." else { return false }
        return s.unicodeScalars.allSatisfy { c in
            (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || (c >= "0" && c <= "9") || "._+-:".unicodeScalars.contains(c)
        }
    }

    /// Versions (dpkg's, rpm's [epoch:]version-release, apk's): letters, digits and . + ~ _ - :, starting with a digit or letter.
    static func isVersion(_ s: String) -> Bool {
        guard let first = s.unicodeScalars.first, s.utf8.count <= maxField,
              (first >= "0" && first <= "9") || (first >= "a" && first <= "z") || (first >= "A" && first <= "Z") else { return false }
        return s.unicodeScalars.allSatisfy { c in
            (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || (c >= "0" && c <= "9") || "._+~-:".unicodeScalars.contains(c)
        }
    }

    /// What the package manager is given for one entry: `name=version` (apt, apk), `name-version` (dnf).
    public func specification(_ entry: Entry) -> String {
        database == .rpm ? entry.name + "-" + entry.version : entry.name + "=" + entry.version
    }

    public var specifications: [String] { packages.map(specification) }

    /// Refuses a lock written for another distro, release or architecture: its versions would not apply.
    public func check(distro: String, osVersion: String, architecture: String, source: String) throws {
        for (what, mine, theirs) in [("distro", self.distro, distro), ("os-version", self.osVersion, osVersion),
                                     ("architecture", self.architecture, architecture)] where mine != theirs {
            throw RootfsError("--locked \(source) was written for \(what) \(mine), not \(theirs)",
                              hint: "lock files pin one distro, release and architecture: build with those, or write a new lock with --lock")
        }
    }

    /// The locked package the repository lacks, from the package manager's output: apt's
    /// "Version 'V' for 'P' was not found", dnf's "No match for argument: P-V" (dnf5) or "Unable to find a
    /// match: P-V" (dnf 4), apk's "P=V ... (no such package)".
    public func missing(in lines: [String]) -> Entry? {
        for line in lines {
            if let range = line.range(of: "Version '"), let forRange = line.range(of: "' for '", range: range.upperBound..<line.endIndex),
               let end = line.range(of: "' was not found", range: forRange.upperBound..<line.endIndex) {
                let version = String(line[range.upperBound..<forRange.lowerBound])
                let name = String(line[forRange.upperBound..<end.lowerBound])
                return packages.first { $0.name == name } ?? Entry(name: name, version: version)
            }
            for entry in packages {
                let spec = specification(entry)
                // The whole word: pkg-1.0-1 is not pkg-1.0-10.
                let named = line.hasSuffix(spec) || line.contains(spec + " ") || line.contains(spec + ":")
                if named && ["No match for argument", "Unable to find a match", "no such package"].contains(where: line.contains) {
                    return entry
                }
            }
        }
        return nil
    }
}
