import RootfsSupport
import Glibc

/// A FAT16 file system holding given files (an EFI system partition:
/// \EFI\BOOT\BOOTX64.EFI, loader entries), written straight into a file at an
/// offset: no mkfs, no mount, no loop device, no root. Reproducible: the volume
/// id comes from the caller (derived from the inputs), every time stamp from
/// SOURCE_DATE_EPOCH (1980-01-01, FAT's first day, without it), files laid out
/// contiguously in the order given, directories first.
///
/// A name that fits 8.3 is stored short (an all-lowercase base or extension
/// uppercase with the lowercase flags Linux and Windows honour); any other
/// (`loader.conf`, `rootfs-6.1.efi`) gets VFAT long-name entries before a
/// generated `LOADER~1.CON` short entry.
public struct FATImage: Sendable {
    public enum Content: Sendable {
        case bytes([UInt8])
        case file(String)
    }

    public struct File: Sendable {
        /// Path components below the root, e.g. ["EFI", "BOOT", "BOOTX64.EFI"].
        public var path: [String]
        public var content: Content
        public init(path: [String], content: Content) {
            self.path = path
            self.content = content
        }
    }

    public static let sectorSize = 512
    static let reservedSectors = 1
    static let fatCount = 2
    static let rootEntries = 512
    /// FAT16 needs at least 4085 clusters (fewer is FAT12); kept clear of the boundary.
    static let minimumClusters = 4200
    static let maximumClusters = 65524

    public var files: [File]
    public var label: String
    public var volumeID: UInt32
    public var epoch: Int?
    /// Room left free (bytes), on top of what the files need.
    public var freeBytes: Int64

    public init(files: [File], label: String = "ESP", volumeID: UInt32, epoch: Int?, freeBytes: Int64 = 1 << 20) {
        self.files = files
        self.label = label
        self.volumeID = volumeID
        self.epoch = epoch
        self.freeBytes = freeBytes
    }

    /// A volume id derived from a seed string (the disk's UUID, the UKI's digest).
    public static func volumeID(seed: String) -> UInt32 {
        var h = SHA256()
        h.update(Array("rootfs-fat:\(seed)".utf8))
        let d = h.finalize()
        return UInt32(d[0]) | UInt32(d[1]) << 8 | UInt32(d[2]) << 16 | UInt32(d[3]) << 24
    }

    // MARK: The plan

    final class Node {
        var name: [UInt8]          // 11 bytes, 8.3 padded
        var lowercaseFlags: UInt8
        var longName: [UInt16]?    // VFAT long name, when the name is not 8.3
        var children: [Node] = []
        var content: Content?      // nil: a directory
        var size: Int64 = 0
        var firstCluster: UInt32 = 0
        var clusters: Int64 = 0
        weak var parent: Node?
        init(name: [UInt8], lowercaseFlags: UInt8, content: Content?) {
            self.name = name
            self.lowercaseFlags = lowercaseFlags
            self.content = content
        }
        var isDirectory: Bool { content == nil }
        /// Directory entries it takes: the long-name entries (13 UTF-16 units each) and the short one.
        var entryCount: Int { 1 + ((longName?.count ?? 0) + 12) / 13 }
    }

    /// The geometry: where the FATs, the root directory and the data lie.
    public struct Plan: @unchecked Sendable {
        public var totalSectors: Int
        public var sectorsPerCluster: Int
        public var fatSectors: Int
        public var clusters: Int
        var root: Node
        var ordered: [Node]        // directories (breadth first), then files, in cluster order

        public var bytes: Int64 { Int64(totalSectors) * Int64(FATImage.sectorSize) }
        var rootDirectorySectors: Int { FATImage.rootEntries * 32 / FATImage.sectorSize }
        var firstFATSector: Int { FATImage.reservedSectors }
        var rootDirectorySector: Int { FATImage.reservedSectors + FATImage.fatCount * fatSectors }
        var firstDataSector: Int { rootDirectorySector + rootDirectorySectors }
        var clusterBytes: Int64 { Int64(sectorsPerCluster * FATImage.sectorSize) }
        func sectorOf(cluster: UInt32) -> Int64 { Int64(firstDataSector) + Int64(cluster - 2) * Int64(sectorsPerCluster) }
    }

    /// An 8.3 name, or a clear error: (11 name bytes, lowercase flags).
    static func shortName(_ name: String) throws -> ([UInt8], UInt8) {
        let parts = name.split(separator: ".", omittingEmptySubsequences: false)
        let allowed = Set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789$%'-_@~`!(){}^#&".utf8)
        func part(_ s: Substring, max: Int) throws -> ([UInt8], Bool) {
            let bytes = Array(s.utf8)
            let upper = bytes.map { $0 >= 0x61 && $0 <= 0x7a ? $0 - 0x20 : $0 }
            guard !bytes.isEmpty || max == 3, bytes.count <= max, upper.allSatisfy({ allowed.contains($0) }) else {
                throw RootfsError("\(name) is not an 8.3 name: the ESP writer stores short names only",
                                  hint: "name ESP files in 8.3 form (BOOTX64.EFI, loader.conf, rootfs.conf)")
            }
            let hasLower = bytes.contains { $0 >= 0x61 && $0 <= 0x7a }
            let hasUpper = bytes.contains { $0 >= 0x41 && $0 <= 0x5a }
            guard !(hasLower && hasUpper) else {
                throw RootfsError("\(name) mixes upper and lower case: a short FAT name stores one case per part",
                                  hint: "use all-uppercase or all-lowercase names")
            }
            return (upper + [UInt8](repeating: 0x20, count: max - bytes.count), hasLower)
        }
        guard parts.count <= 2, name != ".", name != ".." else {
            throw RootfsError("\(name) is not an 8.3 name: the ESP writer stores short names only",
                              hint: "name ESP files in 8.3 form (BOOTX64.EFI, loader.conf)")
        }
        let (base, lowerBase) = try part(parts[0], max: 8)
        let (ext, lowerExt) = parts.count == 2 ? try part(parts[1], max: 3) : ([UInt8](repeating: 0x20, count: 3), false)
        return (base + ext, (lowerBase ? 0x08 : 0) | (lowerExt ? 0x10 : 0))
    }

    public func plan() throws -> Plan {
        let root = Node(name: [UInt8](repeating: 0x20, count: 11), lowercaseFlags: 0, content: nil)
        for file in files {
            guard !file.path.isEmpty else { throw RootfsError("an ESP file has an empty path") }
            var directory = root
            for (i, component) in file.path.enumerated() {
                let isLast = i == file.path.count - 1
                if let existing = directory.children.first(where: { $0.longName.map { String(decoding: $0, as: UTF16.self) } ?? Self.displayName($0) == component }) {
                    guard !isLast, existing.isDirectory else {
                        throw RootfsError("the ESP would hold \(file.path.joined(separator: "/")) twice (or a file where a directory goes)")
                    }
                    directory = existing
                    continue
                }
                let node: Node
                if let (name, flags) = try? Self.shortName(component) {
                    node = Node(name: name, lowercaseFlags: flags, content: isLast ? file.content : nil)
                } else {
                    let utf16 = Array(component.utf16)
                    guard !utf16.isEmpty, utf16.count <= 255, component != ".", component != "..",
                          !utf16.contains(where: { $0 < 0x20 || "\\/:*?\"<>|".utf16.contains($0) }) else {
                        throw RootfsError("\(component) cannot be a FAT file name", hint: "use letters, digits, dots and dashes")
                    }
                    node = Node(name: Self.generatedShortName(component, taken: Set(directory.children.map(\.name))),
                                lowercaseFlags: 0, content: isLast ? file.content : nil)
                    node.longName = utf16
                }
                node.parent = directory
                directory.children.append(node)
                if isLast {
                    switch file.content {
                    case .bytes(let b): node.size = Int64(b.count)
                    case .file(let path):
                        let fd = try OwnedFileDescriptor(path: path, flags: O_RDONLY)
                        node.size = try fd.size()
                    }
                    guard node.size <= Int64(UInt32.max) else {
                        throw RootfsError("\(path(node)) is \(node.size) bytes: a FAT file holds at most 4 GiB - 1")
                    }
                }
                directory = node
            }
        }
        // Directories breadth first, then files, each in the order given.
        var directories: [Node] = []
        var queue = root.children.filter(\.isDirectory)
        while !queue.isEmpty {
            let d = queue.removeFirst()
            directories.append(d)
            queue += d.children.filter(\.isDirectory)
        }
        guard root.children.reduce(1, { $0 + $1.entryCount }) <= Self.rootEntries else { throw RootfsError("the ESP's root directory holds at most \(Self.rootEntries - 1) entries") }
        var all: [Node] = []
        func collect(_ d: Node) { for c in d.children { if !c.isDirectory { all.append(c) } else { collect(c) } } }
        collect(root)
        let ordered = directories + all

        for sectorsPerCluster in [1, 2, 4, 8, 16, 32, 64] {
            let clusterBytes = Int64(sectorsPerCluster * Self.sectorSize)
            var needed: Int64 = 0
            for node in ordered {
                let bytes = node.isDirectory ? Int64(node.children.reduce(2) { $0 + $1.entryCount }) * 32 : node.size
                node.clusters = max(1, (bytes + clusterBytes - 1) / clusterBytes)
                needed += node.clusters
            }
            needed += (freeBytes + clusterBytes - 1) / clusterBytes
            let clusters = max(Int64(Self.minimumClusters), needed)
            guard clusters <= Int64(Self.maximumClusters) else { continue }
            let fatSectors = Int(((clusters + 2) * 2 + Int64(Self.sectorSize) - 1) / Int64(Self.sectorSize))
            let overhead = Self.reservedSectors + Self.fatCount * fatSectors + Self.rootEntries * 32 / Self.sectorSize
            var next: UInt32 = 2
            for node in ordered {
                node.firstCluster = next
                next += UInt32(node.clusters)
            }
            return Plan(totalSectors: overhead + Int(clusters) * sectorsPerCluster, sectorsPerCluster: sectorsPerCluster,
                        fatSectors: fatSectors, clusters: Int(clusters), root: root, ordered: ordered)
        }
        throw RootfsError("the ESP's files need more than FAT16's 2 GiB", hint: "keep the ESP small: the UKI and a few loader entries")
    }

    func path(_ node: Node) -> String {
        var parts: [String] = []
        var n: Node? = node
        while let c = n, c.parent != nil { parts.insert(String(decoding: c.name, as: UTF8.self), at: 0); n = c.parent }
        return parts.joined(separator: "/")
    }

    // MARK: Writing

    /// FAT's date and time (local time without a zone: we store UTC) of the epoch,
    /// clamped to FAT's range (1980-2107).
    static func timestamp(_ epoch: Int?) -> (date: UInt16, time: UInt16) {
        let seconds = min(max(epoch ?? 315_532_800, 315_532_800), 4_354_819_198)
        let days = seconds / 86400
        let rest = seconds % 86400
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days + 719_468
        let era = z / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yoe + era * 400 + (month <= 2 ? 1 : 0)
        let date = UInt16((year - 1980) << 9 | month << 5 | day)
        let time = UInt16((rest / 3600) << 11 | (rest % 3600 / 60) << 5 | (rest % 60) / 2)
        return (date, time)
    }

    func directoryEntry(name: [UInt8], attributes: UInt8, flags: UInt8 = 0, cluster: UInt32, size: UInt32) -> [UInt8] {
        let (date, time) = Self.timestamp(epoch)
        var e = BinaryEncoder(zeros: 32)
        e.put(name, at: 0)
        e.put(attributes, at: 11)
        e.put(flags, at: 12)
        e.put(time, at: 14)
        e.put(date, at: 16)
        e.put(date, at: 18)
        e.put(UInt16(cluster >> 16), at: 20)
        e.put(time, at: 22)
        e.put(date, at: 24)
        e.put(UInt16(truncatingIfNeeded: cluster), at: 26)
        e.put(size, at: 28)
        return e.bytes
    }

    func entries(of directory: Node) -> [UInt8] {
        var out: [UInt8] = []
        for child in directory.children {
            if let long = child.longName { out += longNameEntries(long, shortName: child.name) }
            out += directoryEntry(name: child.name, attributes: child.isDirectory ? 0x10 : 0x20, flags: child.lowercaseFlags,
                                  cluster: child.firstCluster, size: child.isDirectory ? 0 : UInt32(child.size))
        }
        return out
    }

    /// VFAT long-name entries, last part first, each with the short name's checksum.
    func longNameEntries(_ name: [UInt16], shortName: [UInt8]) -> [UInt8] {
        var sum: UInt8 = 0
        for b in shortName { sum = ((sum & 1) << 7) &+ (sum >> 1) &+ b }
        let count = (name.count + 12) / 13
        var units = name
        if units.count % 13 != 0 { units.append(0) }
        while units.count % 13 != 0 { units.append(0xffff) }
        var out: [UInt8] = []
        for ordinal in stride(from: count, through: 1, by: -1) {
            let part = Array(units[(ordinal - 1) * 13..<ordinal * 13])
            var e = BinaryEncoder(zeros: 32)
            e.put(UInt8(ordinal) | (ordinal == count ? 0x40 : 0), at: 0)
            for (i, u) in part.enumerated() {
                let offset = i < 5 ? 1 + 2 * i : i < 11 ? 14 + 2 * (i - 5) : 28 + 2 * (i - 11)
                e.put(u, at: offset)
            }
            e.put(UInt8(0x0f), at: 11)
            e.put(sum, at: 13)
            out += e.bytes
        }
        return out
    }

    /// "LOADER~1CON" for loader.conf: the short name Windows would generate, unique in its directory.
    static func generatedShortName(_ name: String, taken: Set<[UInt8]>) -> [UInt8] {
        let allowed = Set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789$%'-_@~`!(){}^#&".utf8)
        func clean(_ s: Substring) -> [UInt8] { Array(s.uppercased().utf8).filter { allowed.contains($0) } }
        let dot = name.lastIndex(of: ".")
        let base = clean(dot.map { name[..<$0] } ?? name[...])
        let ext = dot.map { clean(name[name.index(after: $0)...]) } ?? []
        let extension3 = Array(ext.prefix(3)) + [UInt8](repeating: 0x20, count: 3 - min(3, ext.count))
        for n in 1..<1_000_000 {
            let tail = Array("~\(n)".utf8)
            let stem = Array((base.isEmpty ? Array("FILE".utf8) : base).prefix(8 - tail.count)) + tail
            let candidate = stem + [UInt8](repeating: 0x20, count: 8 - stem.count) + extension3
            if !taken.contains(candidate) { return candidate }
        }
        return Array("RANDOM~1   ".utf8)
    }

    static func displayName(_ node: Node) -> String {
        func trimmed(_ b: ArraySlice<UInt8>) -> String { String(decoding: b.reversed().drop { $0 == 0x20 }.reversed(), as: UTF8.self) }
        let base = trimmed(node.name[0..<8])
        let ext = trimmed(node.name[8..<11])
        let b = node.lowercaseFlags & 0x08 != 0 ? base.lowercased() : base
        let e = node.lowercaseFlags & 0x10 != 0 ? ext.lowercased() : ext
        return e.isEmpty ? b : b + "." + e
    }

    var labelBytes: [UInt8] {
        let upper = Array(label.uppercased().utf8.prefix(11))
        return upper + [UInt8](repeating: 0x20, count: 11 - upper.count)
    }

    func bootSector(_ plan: Plan, hiddenSectors: UInt32) -> [UInt8] {
        var b = BinaryEncoder(zeros: Self.sectorSize)
        b.put([0xeb, 0x3c, 0x90], at: 0)
        b.put(Array("ROOTFS  ".utf8), at: 3)
        b.put(UInt16(Self.sectorSize), at: 11)
        b.put(UInt8(plan.sectorsPerCluster), at: 13)
        b.put(UInt16(Self.reservedSectors), at: 14)
        b.put(UInt8(Self.fatCount), at: 16)
        b.put(UInt16(Self.rootEntries), at: 17)
        if plan.totalSectors < 65536 { b.put(UInt16(plan.totalSectors), at: 19) } else { b.put(UInt32(plan.totalSectors), at: 32) }
        b.put(UInt8(0xf8), at: 21)                      // media: fixed disk
        b.put(UInt16(plan.fatSectors), at: 22)
        b.put(UInt16(32), at: 24)                       // sectors per track (unused with LBA)
        b.put(UInt16(64), at: 26)                       // heads
        b.put(hiddenSectors, at: 28)
        b.put(UInt8(0x80), at: 36)                      // drive number
        b.put(UInt8(0x29), at: 38)                      // extended boot signature
        b.put(volumeID, at: 39)
        b.put(labelBytes, at: 43)
        b.put(Array("FAT16   ".utf8), at: 54)
        // Boot code for a BIOS that tries this volume: int 18h ("no bootable disk").
        b.put([0xcd, 0x18, 0xeb, 0xfe], at: 62)
        b.put([0x55, 0xaa], at: 510)
        return b.bytes
    }

    /// Writes the file system at `offset` of `fd` (which must be large enough or growable).
    /// `hiddenSectors` is the partition's first LBA on a disk (0 for a bare image).
    public func write(_ plan: Plan, to fd: borrowing OwnedFileDescriptor, at offset: Int64, hiddenSectors: UInt32 = 0) throws {
        let sector = Int64(Self.sectorSize)
        try fd.writeAll(bootSector(plan, hiddenSectors: hiddenSectors), at: offset)
        // The FAT: media and end-of-chain marks, then one contiguous chain per file and directory.
        var fat = BinaryEncoder(zeros: plan.fatSectors * Self.sectorSize)
        fat.put(UInt16(0xfff8), at: 0)
        fat.put(UInt16(0xffff), at: 2)
        for node in plan.ordered {
            for i in 0..<node.clusters {
                let cluster = Int(node.firstCluster) + Int(i)
                fat.put(i == node.clusters - 1 ? UInt16(0xffff) : UInt16(cluster + 1), at: cluster * 2)
            }
        }
        for copy in 0..<Self.fatCount {
            try fd.writeAll(fat.bytes, at: offset + Int64(plan.firstFATSector + copy * plan.fatSectors) * sector)
        }
        // The root directory: the volume label, then the entries.
        var rootDirectory = BinaryEncoder(zeros: plan.rootDirectorySectors * Self.sectorSize)
        rootDirectory.put(directoryEntry(name: labelBytes, attributes: 0x08, cluster: 0, size: 0), at: 0)
        rootDirectory.put(entries(of: plan.root), at: 32)
        try fd.writeAll(rootDirectory.bytes, at: offset + Int64(plan.rootDirectorySector) * sector)
        for node in plan.ordered {
            let at = offset + plan.sectorOf(cluster: node.firstCluster) * sector
            if node.isDirectory {
                let parentCluster = node.parent?.parent == nil ? 0 : node.parent!.firstCluster
                var d = BinaryEncoder(zeros: Int(node.clusters * plan.clusterBytes))
                d.put(directoryEntry(name: Array(".          ".utf8), attributes: 0x10, cluster: node.firstCluster, size: 0), at: 0)
                d.put(directoryEntry(name: Array("..         ".utf8), attributes: 0x10, cluster: parentCluster, size: 0), at: 32)
                d.put(entries(of: node), at: 64)
                try fd.writeAll(d.bytes, at: at)
                continue
            }
            switch node.content {
            case .bytes(let b)?: try fd.writeAll(b, at: at)
            case .file(let path)?:
                let input = try OwnedFileDescriptor(path: path, flags: O_RDONLY)
                try UnifiedKernelImage.copy(from: input, to: fd, at: at, count: node.size, name: path)
            case nil: break
            }
        }
    }

    /// A bare FAT image file (for an El Torito EFI boot image), written to a temporary name and renamed.
    @discardableResult
    public func write(to output: String) throws -> Plan {
        let plan = try plan()
        let temporary = FS.siblingTemporaryPath(for: output)
        var keep = false
        defer { if !keep { unlink(temporary) } }
        var fd = try OwnedFileDescriptor(path: temporary, flags: O_RDWR | O_CREAT | O_EXCL, mode: 0o644, name: output)
        // Zeroed space first (a sparse file): free clusters and unused FAT entries read as zero.
        guard ftruncate(fd.raw, off_t(plan.bytes)) == 0 else { throw RootfsError("cannot size \(output): \(FS.errnoText())") }
        try write(plan, to: fd, at: 0)
        try fd.close()
        try FS.rename(temporary, to: output)
        keep = true
        return plan
    }
}
