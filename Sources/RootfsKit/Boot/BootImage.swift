import Foundation
import RootfsImage

/// How a disk image holds the root file system: the file's container format
/// (what QEMU's `format=` says), the partition table inside it and the root
/// file system (in the first partition, or the whole disk without a table).
public struct DiskLayout: Sendable, Equatable, CustomStringConvertible {
    /// QEMU's block driver names.
    public enum Container: String, Sendable, Equatable { case raw, vpc, qcow2, vmdk, vhdx }
    public enum Table: String, Sendable, Equatable { case mbr, gpt, none }
    /// `unknown`: no rootfstype is passed and the kernel tries what it knows. `vfat`: the first
    /// partition is FAT; with a GPT, an EFI system partition (raw-efi): the firmware boots it.
    public enum Filesystem: String, Sendable, Equatable { case ext4, erofs, xfs, squashfs, vfat, unknown }

    public var container: Container
    public var table: Table
    public var filesystem: Filesystem

    public init(container: Container = .raw, table: Table, filesystem: Filesystem) {
        self.container = container
        self.table = table
        self.filesystem = filesystem
    }

    /// The guest's root device for a disk on the NVMe controller QEMU gets.
    public var rootDevice: String { table == .none ? "/dev/nvme0n1" : "/dev/nvme0n1p1" }
    /// erofs and squashfs cannot be written: mount them read-only.
    public var readOnly: Bool { filesystem == .erofs || filesystem == .squashfs }
    /// GPT with a FAT first partition (the ESP of raw-efi, qcow2-efi): UEFI firmware boots it
    /// from its ESP, with the command line its UKI was written with.
    public var bootsFromESP: Bool { table == .gpt && filesystem == .vfat }

    public var description: String {
        let fs = filesystem == .unknown ? "an unknown file system" : filesystem.rawValue
        let where_ = table == .none ? "bare \(fs) image" : "disk with \(table == .mbr ? "an MBR" : "a GPT") (\(fs))"
        let what = bootsFromESP ? "disk with a GPT and an EFI system partition" : where_
        return container == .raw ? what : "\(container == .vpc ? "VHD" : container == .vhdx ? "VHDX" : container.rawValue) holding a \(what)"
    }
}

/// What `rootfs boot` was given, told apart by content rather than by name.
public enum BootImageKind: Sendable, Equatable {
    /// An initramfs: a cpio archive, plain or compressed.
    case initrd
    /// A bootable ISO 9660 image (BIOS, El Torito): QEMU's firmware boots it, no -kernel.
    case iso
    /// A disk image (raw, VHD, VHDX, qcow2, vmdk) with the root file system on it.
    case disk(DiskLayout)
    /// An ISO whose El Torito catalog has an EFI image (iso-efi, iso-efi-initrd); `bios`: a
    /// BIOS entry too (iso-hybrid). OVMF boots it, or SeaBIOS with `--firmware bios` when `bios`.
    case efiISO(bios: Bool)
    /// A unified kernel image (a PE file with a `.linux` section): OVMF runs it as the kernel.
    case uki

    /// The firmware boots it with the command line it was written with (no -kernel, no -append).
    public var bootsItself: Bool {
        switch self {
        case .iso, .efiISO: return true
        case .disk(let layout): return layout.bootsFromESP
        case .initrd, .uki: return false
        }
    }

    /// Only UEFI firmware boots it.
    public var needsEFI: Bool {
        switch self {
        case .efiISO(let bios): return !bios
        case .uki: return true
        case .disk(let layout): return layout.bootsFromESP
        case .initrd, .iso: return false
        }
    }

    /// A raw disk with an MBR partition table; the root (ext4) is its first partition.
    public static let partitionedDisk = BootImageKind.disk(DiskLayout(table: .mbr, filesystem: .ext4))
    /// A raw ext2/3/4 file system without a partition table.
    public static let filesystemImage = BootImageKind.disk(DiskLayout(table: .none, filesystem: .ext4))

    /// The guest's root device; nil when the root is not a disk.
    public var rootDevice: String? {
        if case .disk(let layout) = self { return layout.rootDevice }
        return nil
    }

    public var disk: DiskLayout? {
        if case .disk(let layout) = self { return layout }
        return nil
    }

    /// How many bytes of the head `detect(head:)` wants (an ISO's volume descriptor is at 32 KiB).
    public static let headBytes = 0x8800
    /// How much of a qcow2/vmdk/dynamic VHD is converted to raw to look at its partitions.
    static let probeBytes = 4 << 20

    // MARK: Detection

    /// Looks at the content of `path`: its first bytes, its last 512 (a fixed
    /// VHD's footer) and, for a disk, the partition table and the first
    /// partition's superblock. qcow2, vmdk and dynamic VHD images are read
    /// through `qemu-img dd` (their first 4 MiB as raw).
    public static func detect(path: String, runner: ProcessRunner = ProcessRunner()) async throws -> BootImageKind {
        guard let file = ImageFile(path: path) else {
            throw RootfsError("cannot read \(path)", hint: "pass an initrd, an ISO or a disk image made by rootfs")
        }
        defer { file.close() }
        let head = file.read(at: 0, count: headBytes)
        let tail = file.size >= 512 ? file.read(at: file.size - 512, count: 512) : []
        let unknown = RootfsError("\(path) is neither an initrd, an ISO nor a disk image",
                                  hint: "expected a cpio archive (plain or compressed), an ISO 9660 image, or a raw, VHD, qcow2 or vmdk disk image",
                                  details: ["first bytes: " + head.prefix(8).map { String(format: "%02x", $0) }.joined(separator: " ")])
        // A tar is a root file system, not something to boot: said before QEMU turns it into a
        // kernel panic. Compressed, only the content tells an initrd from a tar (a bounded prefix).
        if DecompressedPrefix.isTar(head) { throw tarNotInitrd(path, compressed: false) }
        guard var first = detect(head: head, tail: tail) else { throw unknown }
        if first == .initrd, !DecompressedPrefix.isCpio(head),
           let content = DecompressedPrefix.read(path: path, count: 512) {
            if DecompressedPrefix.isTar(content) { throw tarNotInitrd(path, compressed: true) }
            if !DecompressedPrefix.isCpio(content) {
                throw RootfsError("\(path) is compressed but holds no cpio archive, so it is not an initrd",
                                  hint: "boot an initrd (rootfs initrd), an ISO or a disk image; a compressed disk image must be decompressed first",
                                  details: ["first bytes inside: " + content.prefix(8).map { String(format: "%02x", $0) }.joined(separator: " ")])
            }
        }
        if first == .iso, let efi = elToritoEFI(read: file.read) { first = .efiISO(bios: efi.bios) }
        if first == .uki { return try classifyPE(path: path, head: head) }
        guard case .disk(let guess) = first else { return first }
        let container = guess.container
        // Before qemu-img or QEMU open it: a container naming another file (a backing
        // file, an external data file, a parent disk) would make root read that file.
        try ContainerHeader.refuseExternalFiles(path: path, container: container, file: file, head: head, tail: tail)
        // A fixed VHD is raw data followed by its footer: read it as raw.
        let isFixedVHD = container == .vpc && Array(head.prefix(8)) != Array("conectix".utf8)
        if container == .raw || isFixedVHD {
            return .disk(try layout(container: container, what: path, size: Int64(file.size), read: file.read))
        }
        let work = try FS.makeSiblingTemporaryDirectory(for: FileManager.default.temporaryDirectory.path + "/rootfs-probe")
        defer { FS.remove(work) }
        let raw = work + "/head.raw"
        do {
            try await runner.capture(probeCommand(image: path, container: container, output: raw))
        } catch let failure as ToolFailure {
            throw RootfsError("qemu-img could not read \(path) as \(container.rawValue) (\(failure.status))",
                              hint: "is qemu-utils installed and the image complete? `qemu-img check \(path)` says more",
                              details: failure.outputTail)
        }
        guard let converted = ImageFile(path: raw) else { throw RootfsError("qemu-img wrote no \(raw)") }
        defer { converted.close() }
        return .disk(try layout(container: container, what: path, read: converted.read))
    }

    static func tarNotInitrd(_ path: String, compressed: Bool) -> RootfsError {
        RootfsError("\(path) is a tar archive\(compressed ? " (compressed)" : ""), not an initrd: use `rootfs initrd`",
                    hint: "`rootfs initrd \(path) -o x.initrd` makes an initrd of it (or `rootfs image` a disk image); then boot that")
    }

    /// `qemu-img dd` of the first 4 MiB of a container image into a raw file. The
    /// image is named by `--image-opts` with the `file` protocol driver forced and
    /// commas doubled, so no part of its path is read as an option or a protocol
    /// (`json:{...}`, `nbd:...`), and no backing file is opened (`backing=` empty).
    public static func probeCommand(image: String, container: DiskLayout.Container, output: String) -> ToolCommand {
        ToolCommand("qemu-img", ["dd", "--image-opts", "-O", "raw", "bs=1M", "count=\(probeBytes >> 20)",
                                 "if=driver=\(container.rawValue),file.driver=file,file.filename=\(QEMUBoot.quoted(image))"
                                     + (container == .qcow2 ? ",backing=" : ""),
                                 "of=\(output)"])
    }

    /// Classifies an image from its first bytes (up to `headBytes`) and its last 512.
    /// A raw disk's table and file system are read from `head`; containers get a placeholder layout.
    public static func detect(head: [UInt8], tail: [UInt8] = []) -> BootImageKind? {
        func has(_ magic: [UInt8], at offset: Int) -> Bool {
            head.count >= offset + magic.count && Array(head[offset..<offset + magic.count]) == magic
        }
        // Archive and compression magics first: they are checked at offset 0.
        let initrdMagics: [[UInt8]] = [
            Array("070701".utf8), Array("070702".utf8), Array("070707".utf8),  // cpio newc, crc, odc
            [0xc7, 0x71], [0x71, 0xc7],                                        // old binary cpio
            [0x1f, 0x8b],                                                      // gzip
            [0x28, 0xb5, 0x2f, 0xfd],                                          // zstd
            [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00],                              // xz
            [0x02, 0x21, 0x4c, 0x18],                                          // lz4 legacy
            [0x42, 0x5a, 0x68],                                                // bzip2
            [0x5d, 0x00, 0x00],                                                // lzma
        ]
        if initrdMagics.contains(where: { has($0, at: 0) }) { return .initrd }
        // ISO 9660: the primary volume descriptor at 32 KiB ("\u{1}CD001"). Before
        // the MBR check: a hybrid ISO carries an MBR too.
        if has(Array("CD001".utf8), at: 0x8001) { return .iso }
        if has([0x51, 0x46, 0x49, 0xfb], at: 0) { return .disk(DiskLayout(container: .qcow2, table: .mbr, filesystem: .unknown)) }
        if has(Array("KDMV".utf8), at: 0) { return .disk(DiskLayout(container: .vmdk, table: .mbr, filesystem: .unknown)) }
        if has(Array("conectix".utf8), at: 0) { return .disk(DiskLayout(container: .vpc, table: .mbr, filesystem: .unknown)) }
        if has(Array("vhdxfile".utf8), at: 0) { return .disk(DiskLayout(container: .vhdx, table: .mbr, filesystem: .unknown)) }
        // A PE image ("MZ", then "PE\0\0" where e_lfanew points): a UKI, or a bare kernel (told apart by detect(path:)).
        if has(Array("MZ".utf8), at: 0), head.count >= 64 {
            let lfanew = Int(littleEndian(head, 0x3c, 4))
            if lfanew < head.count - 4, has([0x50, 0x45, 0, 0], at: lfanew) { return .uki }
        }
        let container: DiskLayout.Container = tail.count == 512 && Array(tail.prefix(8)) == Array("conectix".utf8) ? .vpc : .raw
        // From the head alone: a table pointing beyond it is judged when the whole file is read.
        let found = (try? layout(container: container) { offset, count in
            offset < head.count ? Array(head[offset..<min(head.count, offset + count)]) : []
        }) ?? DiskLayout(container: container, table: .mbr, filesystem: .unknown)
        if container == .raw && found.table == .none && found.filesystem == .unknown { return nil }
        return .disk(found)
    }

    /// The partition table and the root file system of a raw disk, read through `read(offset, count)`
    /// (`PartitionProbe`, shared with `extend`). `size`: the disk's size when known.
    static func layout(container: DiskLayout.Container, what: String = "the image", size: Int64? = nil,
                       read: @escaping (Int, Int) -> [UInt8]) throws -> DiskLayout {
        let found = try PartitionProbe.probe(what: what, size: size) { offset, count in
            guard let offset = Int(exactly: offset) else { return [] }
            return read(offset, count)
        }
        let table: DiskLayout.Table = found.table == .gpt ? .gpt : found.table == .mbr ? .mbr : .none
        if table == .none { return DiskLayout(container: container, table: .none, filesystem: filesystem(at: 0, read: read)) }
        guard let start = found.firstPartitionOffset, let offset = Int(exactly: start) else {
            return DiskLayout(container: container, table: table, filesystem: .unknown)
        }
        return DiskLayout(container: container, table: table, filesystem: filesystem(at: offset, read: read))
    }

    /// ext2/3/4: 0xEF53 at 56 in the superblock at 1024; erofs: 0xE0F5E1E2 at 1024; xfs: "XFSB" at 0;
    /// squashfs: "hsqs" at 0; FAT: the boot sector's 0x55AA and "FAT" at 0x36 (FAT12/16) or 0x52 (FAT32).
    static func filesystem(at start: Int, read: (Int, Int) -> [UInt8]) -> DiskLayout.Filesystem {
        if read(start, 4) == Array("XFSB".utf8) { return .xfs }
        let boot = read(start, 512)
        if boot.count == 512 {
            if Array(boot.prefix(4)) == Array("hsqs".utf8) { return .squashfs }
            if boot[510] == 0x55, boot[511] == 0xaa,
               Array(boot[0x36..<0x39]) == Array("FAT".utf8) || Array(boot[0x52..<0x55]) == Array("FAT".utf8) { return .vfat }
        }
        let superblock = read(start + 1024, 64)
        guard superblock.count == 64 else { return .unknown }
        if littleEndian(superblock, 0, 4) == 0xE0F5_E1E2 { return .erofs }
        if littleEndian(superblock, 56, 2) == 0xEF53 { return .ext4 }
        return .unknown
    }

    static func littleEndian(_ bytes: [UInt8], _ offset: Int, _ count: Int) -> UInt64 {
        var value: UInt64 = 0
        for i in (0..<count).reversed() { value = value << 8 | UInt64(bytes[offset + i]) }
        return value
    }

    // MARK: EFI

    /// The El Torito catalog of an ISO: which platforms its bootable entries are for. The boot
    /// record is sector 17 ("EL TORITO SPECIFICATION", the catalog's sector at 0x47); each
    /// 32-byte catalog entry is the validation entry (platform at 1), the default entry, then
    /// section headers (0x90, 0x91 the last; platform at 1, entry count at 2) and their entries
    /// (0x88 bootable). nil when the ISO has no EFI entry. Bounded: at most one catalog sector.
    static func elToritoEFI(read: (Int, Int) -> [UInt8]) -> (bios: Bool, efi: Bool)? {
        let record = read(17 * 2048, 2048)
        guard record.count == 2048, record[0] == 0, Array(record[1..<6]) == Array("CD001".utf8),
              Array(record[7..<30]) == Array("EL TORITO SPECIFICATION".utf8) else { return nil }
        let sector = Int(littleEndian(record, 0x47, 4))
        guard sector > 17, sector < Int(UInt32.max), let offset = Int(exactly: Int64(sector) * 2048) else { return nil }
        let catalog = read(offset, 2048)
        guard catalog.count == 2048, catalog[0] == 1, catalog[30] == 0x55, catalog[31] == 0xaa else { return nil }
        var platforms: [UInt8] = []
        if catalog[32] == 0x88 { platforms.append(catalog[1]) }
        var index = 64
        while index + 32 <= catalog.count {
            let header = catalog[index]
            guard header == 0x90 || header == 0x91 else { break }
            let platform = catalog[index + 1]
            let count = Int(littleEndian(catalog, index + 2, 2))
            index += 32
            for _ in 0..<count where index + 32 <= catalog.count {
                if catalog[index] == 0x88 { platforms.append(platform) }
                index += 32
            }
            if header == 0x91 { break }
        }
        guard platforms.contains(0xef) else { return nil }
        return (platforms.contains(0), true)
    }

    /// A PE file: a unified kernel image when it has a `.linux` section; a bare kernel
    /// (an EFI-stub bzImage, "HdrS" at 0x202) or another EFI program is refused clearly.
    static func classifyPE(path: String, head: [UInt8]) throws -> BootImageKind {
        let pe = try PEImage(head: head, what: path)
        if pe.sections.contains(where: { $0.nameText == ".linux" }) { return .uki }
        if head.count > 0x206, Array(head[0x202..<0x206]) == Array("HdrS".utf8) {
            throw RootfsError("\(path) is a kernel, not an image to boot",
                              hint: "pass it as --kernel with an initrd or a disk image, or write --format uki to boot it alone")
        }
        throw RootfsError("\(path) is an EFI program without a .linux section, not a unified kernel image",
                          hint: "write one with rootfs image --format uki")
    }

    /// The `.cmdline` section of a UKI (what it was written with), nil when it has none or it is not text.
    public static func ukiCommandLine(path: String) -> String? {
        guard let file = ImageFile(path: path) else { return nil }
        defer { file.close() }
        guard let pe = try? PEImage(head: file.read(at: 0, count: headBytes), what: path),
              let section = pe.sections.first(where: { $0.nameText == ".cmdline" }), section.virtualSize <= 4096 else { return nil }
        let bytes = file.read(at: Int(section.pointerToRawData), count: Int(section.virtualSize)).prefix { $0 != 0 }
        guard bytes.allSatisfy({ $0 >= 0x20 && $0 < 0x7f }) else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }

    // MARK: Kernel+initrd bundles

    /// LinuxKit's bundle next to `NAME-initrd.img`: `NAME-kernel` (when it
    /// exists) and the content of `NAME-cmdline` (when it exists).
    /// The same for LinuxKit's kernel+squashfs and kernel+erofs: NAME-squashfs.img, NAME-erofs.img.
    public static func bundleCompanions(ofInitrd image: String) -> (kernel: String?, cmdline: String?) {
        bundleCompanions(of: image, suffix: "-initrd.img")
    }

    public static func bundleCompanions(of image: String, suffix: String) -> (kernel: String?, cmdline: String?) {
        guard image.hasSuffix(suffix) else { return (nil, nil) }
        let prefix = String(image.dropLast(suffix.count))
        let kernel = FS.isRegularFile(prefix + "-kernel") ? prefix + "-kernel" : nil
        let cmdline = (try? String(contentsOfFile: prefix + "-cmdline", encoding: .utf8))?
            .split(whereSeparator: { $0 == "\n" || $0 == "\r" }).joined(separator: " ")
            .trimmingCharacters(in: .whitespaces)
        return (kernel, cmdline)
    }
}

/// pread on an image file.
final class ImageFile {
    let fd: Int32
    let size: Int

    init?(path: String) {
        fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { Glibc.close(fd); return nil }
        size = Int(st.st_size)
    }

    func read(at offset: Int, count: Int) -> [UInt8] {
        guard offset >= 0, count > 0, offset < size else { return [] }
        var buffer = [UInt8](repeating: 0, count: min(count, size - offset))
        var done = 0
        while done < buffer.count {
            let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, $0.count - done, off_t(offset + done)) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            done += n
        }
        return Array(buffer.prefix(done))
    }

    func close() { Glibc.close(fd) }
}

/// What a container image's header says about other files. QEMU would follow
/// them: a qcow2 backing file or external data file, a vmdk parent, a VHD
/// differencing disk's parent. `rootfs boot` runs as root, so any of them
/// (`backing=/dev/sda`) would hand a host file to the guest: they are refused.
enum ContainerHeader {
    static func refuseExternalFiles(path: String, container: DiskLayout.Container, file: ImageFile,
                                    head: [UInt8], tail: [UInt8]) throws {
        switch container {
        case .raw: return
        case .qcow2: try qcow2(path: path, head: head)
        case .vmdk: try vmdk(path: path, file: file, head: head)
        case .vpc: try vhd(path: path, head: head, tail: tail)
        case .vhdx:
            if try VHDXProbe.hasParent(what: path, read: file.read) { throw refuse(path, "a VHDX differencing disk's parent") }
        }
    }

    static func refuse(_ path: String, _ what: String) -> RootfsError {
        RootfsError("\(path) names another file (\(what)): rootfs boot does not follow it",
                    hint: "boot a self-contained image: `qemu-img convert -O qcow2 \(path) flat.qcow2` merges it")
    }

    /// qcow2: backing_file_offset at 8 (big-endian u64), header extensions from
    /// byte 72 (v2) or header_length (v3, at 100); extension 0x44415441 is an
    /// external data file, 0xe2792aca the backing file's format.
    static func qcow2(path: String, head: [UInt8]) throws {
        let header = BinaryDecoder(head, order: .big, what: "the qcow2 header of \(path)")
        let version = try header.u32(4)
        guard version == 2 || version == 3 else {
            throw RootfsError("\(path) is qcow2 version \(version), which rootfs boot does not read", hint: "qemu-img convert -O qcow2 it")
        }
        if try header.u64(8) != 0 || header.u32(16) != 0 { throw refuse(path, "a qcow2 backing file") }
        var offset = 72
        if version == 3 {
            // incompatible_features bit 2: an external data file.
            if try header.u64(72) & 0b100 != 0 { throw refuse(path, "a qcow2 external data file") }
            offset = Int(try header.u32(100))
        }
        // Walk the extensions inside the first cluster (what the head holds); every step is checked.
        for _ in 0..<64 {
            guard offset >= 72, offset + 8 <= head.count else { return }
            let type = try header.u32(offset)
            let length = Int(try header.u32(offset + 4))
            if type == 0 { return }
            if type == 0x4441_5441 { throw refuse(path, "a qcow2 external data file") }
            let padded = try Checked.add(length, 7, "a qcow2 header extension length") & ~7
            offset = try Checked.add(offset + 8, padded, "a qcow2 header extension offset")
        }
    }

    /// vmdk (sparse, `KDMV`): the embedded descriptor (sector offset at 28, size at 36,
    /// little-endian u64) must name no parent and no extent file other than itself.
    static func vmdk(path: String, file: ImageFile, head: [UInt8]) throws {
        let header = BinaryDecoder(head, what: "the vmdk header of \(path)")
        let sector = try header.u64(28), sectors = try header.u64(36)
        guard sector != 0, sectors != 0 else { return }
        guard sectors <= 2048, let start = Int(exactly: sector).flatMap({ $0 <= Int.max / 512 ? $0 * 512 : nil }) else {
            throw RootfsError("\(path): its vmdk descriptor is \(sectors) sectors at sector \(sector), beyond what a vmdk holds")
        }
        let text = String(decoding: file.read(at: start, count: Int(sectors) * 512).prefix { $0 != 0 }, as: UTF8.self)
        for line in text.split(whereSeparator: { $0 == "\n" || $0 == "\r" }) {
            let words = line.trimmingCharacters(in: .whitespaces)
            if words.hasPrefix("parentFileNameHint") { throw refuse(path, "a vmdk parent disk") }
            if words.hasPrefix("parentCID"), !words.lowercased().hasSuffix("ffffffff") { throw refuse(path, "a vmdk parent disk") }
            // An extent line: RW 2048 SPARSE "name" [offset]. A monolithic sparse file names itself.
            let fields = words.split(separator: " ", omittingEmptySubsequences: true)
            if fields.count >= 4, ["RW", "RDONLY", "NOACCESS"].contains(String(fields[0])), String(fields[2]) != "SPARSE" {
                throw refuse(path, "a vmdk \(fields[2]) extent")
            }
        }
    }

    /// VHD: the footer's disk type (big-endian u32 at 60): 4 is a differencing disk.
    static func vhd(path: String, head: [UInt8], tail: [UInt8]) throws {
        let footer = Array(head.prefix(8)) == Array("conectix".utf8) ? head : tail
        guard footer.count >= 64 else { return }
        if try BinaryDecoder(footer, order: .big, what: "the VHD footer of \(path)").u32(60) == 4 {
            throw refuse(path, "a VHD differencing disk's parent")
        }
    }
}
