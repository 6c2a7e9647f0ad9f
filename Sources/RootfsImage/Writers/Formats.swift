import RootfsSupport
import Foundation

/// Every output rootfs writes, by the name users give to `--format`.
public enum OutputFormat: String, Sendable, CaseIterable, Codable {
    case rootfs
    case tar
    case tarGz = "tar.gz"
    case tarZst = "tar.zst"
    case initrd
    case raw
    case qcow2
    case vhd
    case vmdk
    /// MS-VHDX, dynamic (all-zero blocks not stored) unless `--vhdx-fixed`.
    case vhdx
    /// LinuxKit's `dynamic-vhd`: a dynamic (sparse) VHD.
    case dynamicVHD = "dynamic-vhd"
    case erofs
    case squashfs
    case kernelInitrd = "kernel+initrd"
    case isoBios = "iso-bios"
    /// An OCI image layout directory holding the tree as one layer.
    case oci
    /// `docker save`'s tar of the tree as one layer (`docker load` takes it).
    case dockerArchive = "docker-archive"
    /// KubeVirt's containerDisk: an OCI layout whose layer holds the qcow2 disk under /disk/.
    case containerDisk = "containerdisk"
    /// A unified kernel image: systemd's EFI stub with the kernel, the initrd, the command line
    /// and os-release as PE sections (EFI/UnifiedKernelImage.swift).
    case uki
    /// LinuxKit's iso-efi: an El Torito EFI image, a FAT ESP holding the UKI (`NAME-efi.iso`).
    case isoEFI = "iso-efi"
    /// LinuxKit's iso-efi-initrd: the initrd stays a file of its own beside the kernel on the ESP,
    /// booted by systemd-boot with a loader entry (LinuxKit's uses GRUB) (`NAME-efi-initrd.iso`).
    case isoEFIInitrd = "iso-efi-initrd"
    /// One ISO booting both ways: iso-bios's isolinux and iso-efi's ESP (`NAME-hybrid.iso`).
    case isoHybrid = "iso-hybrid"
    /// LinuxKit's raw-efi: GPT, an ESP with the UKI as \EFI\BOOT\BOOTX64.EFI, the root partition
    /// typed as the Discoverable Partitions x86-64 root (`NAME-efi.img`).
    case rawEFI = "raw-efi"
    /// raw-efi converted to qcow2 (`NAME-efi.qcow2`).
    case qcow2EFI = "qcow2-efi"
    /// LinuxKit's kernel+squashfs: `NAME-kernel`, `NAME-squashfs.img` (the tree without /boot), `NAME-cmdline`.
    case kernelSquashfs = "kernel+squashfs"
    /// LinuxKit's kernel+erofs: `NAME-kernel`, `NAME-erofs.img` (the tree without /boot), `NAME-cmdline`.
    case kernelErofs = "kernel+erofs"
    /// LinuxKit's tar-kernel-initrd: `NAME-initrd.tar` holding `kernel`, `initrd.img` and `cmdline`.
    case tarKernelInitrd = "tar-kernel-initrd"

    /// The file name ending (none for the directory and the kernel+initrd bundle, which are name prefixes).
    public var fileExtension: String {
        switch self {
        case .rootfs, .kernelInitrd, .oci, .containerDisk, .kernelSquashfs, .kernelErofs: return ""
        case .raw: return ".img"
        case .uki: return ".efi"
        // LinuxKit's names: NAME-efi.iso, NAME-efi-initrd.iso, NAME-efi.img, NAME-efi.qcow2, NAME-initrd.tar.
        case .isoEFI: return "-efi.iso"
        case .isoEFIInitrd: return "-efi-initrd.iso"
        case .isoHybrid: return "-hybrid.iso"
        case .rawEFI: return "-efi.img"
        case .qcow2EFI: return "-efi.qcow2"
        case .tarKernelInitrd: return "-initrd.tar"
        case .dynamicVHD: return ".vhd"
        case .dockerArchive: return ".docker.tar"
        case .isoBios: return ".iso"
        default: return "." + rawValue
        }
    }

    /// What `rootfs build` writes for this format in `directory`.
    public func outputPath(directory: String, name: String) -> String {
        switch self {
        case .rootfs: return directory + "/rootfs"
        case .kernelInitrd, .kernelSquashfs, .kernelErofs: return directory + "/" + name
        case .oci: return directory + "/" + name + "-oci"
        case .containerDisk: return directory + "/" + name + "-containerdisk"
        default: return directory + "/" + name + fileExtension
        }
    }

    /// The format a file name implies (`rootfs image` without `--format`).
    public static func infer(fromPath path: String) -> OutputFormat? {
        let name = FS.basename(path).lowercased()
        return extensionTable.first { name.hasSuffix($0.0) }?.1
    }

    /// The name endings `infer` knows, longest first where one ends another. LinuxKit's ISO names
    /// first (NAME-efi.iso is iso-efi, NAME.iso iso-bios); raw-efi, qcow2-efi and tar-kernel-initrd
    /// are asked by --format only: NAME-efi.img or NAME-initrd.tar stay raw and tar.
    public static let extensionTable: [(String, OutputFormat)] = [
        ("-efi-initrd.iso", .isoEFIInitrd), ("-efi.iso", .isoEFI), ("-hybrid.iso", .isoHybrid),
        (".efi", .uki),
        (".docker.tar", .dockerArchive), (".tar.gz", .tarGz), (".tgz", .tarGz), (".tar.zst", .tarZst), (".tzst", .tarZst), (".tar", .tar),
        (".initrd", .initrd), (".cpio", .initrd), (".cpio.gz", .initrd), (".cpio.zst", .initrd),
        (".img", .raw), (".raw", .raw), (".qcow2", .qcow2), (".vhd", .vhd), (".vmdk", .vmdk), (".vhdx", .vhdx),
        (".erofs", .erofs), (".squashfs", .squashfs), (".sqfs", .squashfs), (".iso", .isoBios),
    ]

    /// The formats written as a disk image by DiskImageWriter (so `--fs` and `--block-size` apply).
    public var isDiskImage: Bool {
        switch self {
        case .raw, .qcow2, .vhd, .vmdk, .vhdx, .dynamicVHD, .containerDisk: return true
        default: return false
        }
    }

    /// The formats offered in `--help` and named in errors.
    public static var names: String { allCases.map(\.rawValue).joined(separator: ", ") }

    /// Parses a `--format` value, with a clear error.
    public static func parse(_ text: String) throws -> OutputFormat {
        if let f = OutputFormat(rawValue: text.lowercased()) { return f }
        let aliases: [String: OutputFormat] = ["dir": .rootfs, "directory": .rootfs, "img": .raw, "disk": .raw,
                                               "iso": .isoBios, "kernel-initrd": .kernelInitrd, "vpc": .vhd, "cpio": .initrd]
        if let f = aliases[text.lowercased()] { return f }
        throw RootfsError("unknown format '\(text)'", hint: "known formats: \(names)")
    }
}

/// How images are written; shared by `build`, `image` and `initrd`.
public struct ImageOptions: Sendable {
    /// `--vhdx-fixed` means something only for a vhdx output: refused otherwise, before anything is written.
    public static func requireVHDXFixedFits(_ options: ImageOptions, formats: [OutputFormat]) throws {
        if options.vhdxFixed && !formats.contains(.vhdx) {
            throw RootfsError("--vhdx-fixed applies to vhdx outputs only, and none is asked for",
                              hint: "add --format vhdx (or an output ending in .vhdx), or drop --vhdx-fixed")
        }
    }

    /// `--verity` fits raw disks and their qcow2 conversion only (the hash tree is partition 2
    /// of the disk, VerityDisk.swift): any other format is refused before anything is written.
    public static func requireVerityFits(_ options: ImageOptions, formats: [OutputFormat]) throws {
        guard options.verity else { return }
        let carriers: Set<OutputFormat> = [.raw, .qcow2]
        if let bad = formats.first(where: { !carriers.contains($0) && $0 != .rootfs }) {
            let why: String
            switch bad {
            case .tar, .tarGz, .tarZst, .oci, .dockerArchive: why = "an archive of files has no block device for dm-verity to protect"
            case .initrd, .kernelInitrd: why = "an initrd is unpacked into memory (tmpfs): there are no blocks for dm-verity to check"
            default: why = "rootfs writes the hash tree as partition 2 of a raw disk (or its qcow2 conversion) only"
            }
            throw RootfsError("--verity cannot apply to the \(bad.rawValue) output: \(why)",
                              hint: "with --verity ask for disk outputs only (--image FILE, --format raw or qcow2; a build with no output option also writes an initrd), and other formats in a build without --verity; `rootfs verity FILE` hashes any file system image")
        }
        if !formats.contains(where: carriers.contains) {
            throw RootfsError("--verity applies to raw and qcow2 disk images, and none is asked for", hint: "add --image FILE or --format raw")
        }
        try DiskImageWriter.requireVerityLayout(partitionTable: options.partitionTable, dax: options.dax)
    }

    /// `--block-size` must be one the file systems asked for can use (ext4 1024/2048/4096,
    /// xfs 1024-4096, erofs 4096 only): refused before anything is written.
    public static func requireBlockSizeFits(_ options: ImageOptions, formats: [OutputFormat]) throws {
        guard let size = options.blockSize else { return }
        let disks = formats.contains { $0.isDiskImage }
        let bareErofs = formats.contains(.erofs)
        if disks { try options.filesystem.requireBlockSize(size) }
        if bareErofs { try FilesystemType.erofs.requireBlockSize(size) }
        if !disks && !bareErofs {
            throw RootfsError("--block-size applies to disk images and erofs outputs only, and none is asked for",
                              hint: "add --format raw (or an output ending in .img), or drop --block-size")
        }
    }

    public var compression: Compression = .zstd
    /// `--erofs-compression`: lz4hc by default, as Kata's image_builder.sh (`mkfs.erofs -zlz4hc -Enoinline_data`).
    public var erofsCompression: ErofsCompression = .lz4hc
    /// `--block-size` (Kata's BLOCK_SIZE); nil: 4096.
    public var blockSize: Int?
    public var freeSpaceMiB = 64
    /// `--verity`: a dm-verity hash tree as partition 2 and Kata's root_hash_<variant>.txt next to the disk.
    public var verity = false
    /// `--variant` / BUILD_VARIANT: the root-hash file's name (`root_hash_<variant>.txt`).
    public var variant: String?
    /// The guest's architecture (a verity GPT disk's partition types); nil: this host's.
    public var architecture: String?
    public var partitionTable: PartitionTable = .mbr
    public var filesystem: FilesystemType = .ext4
    public var dax = false
    /// `--align` / IMAGE_SIZE_ALIGNMENT_MB: disk images are rounded up to a multiple of this many MiB (nil: whole MiB).
    public var alignmentMiB: Int?
    /// `--vhdx-fixed`: a VHDX that stores every block (dynamic by default).
    public var vhdxFixed = false
    /// Which program writes ext4 file systems (`--ext4-writer`).
    public var ext4Writer: Ext4WriterKind = .native
    /// The kernel for kernel+initrd and ISO outputs (default: the tree's /boot/vmlinuz*).
    public var kernel: String?
    public var cmdline = "console=ttyS0"
    public var label = "rootfs"
    public var epoch: Int?

    public init() {}
}

/// One output of a build or of `rootfs image`: a format and where it goes
/// (a file, a directory for `rootfs`, a name prefix for kernel+initrd).
/// `--initrd F` is `(initrd, F)` and `--image F` is `(raw, F)`: every output takes the same road.
public struct FormatOutput: Sendable, Equatable {
    public var format: OutputFormat
    public var path: String
    /// What the summary, `--json` and the manifest call it (`image` for `--image`; default: the format's name).
    public var kind: String

    public init(format: OutputFormat, path: String, kind: String? = nil) {
        self.format = format
        self.path = path
        self.kind = kind ?? format.rawValue
    }

    /// Where the manifest of a build whose first file output is this one goes, without
    /// `.manifest.json`: the path without the format's extension (`out/bb.tar.gz` -> `out/bb`),
    /// else without its last extension.
    public var documentBase: String {
        let name = FS.basename(path)
        let ext = format.fileExtension
        if !ext.isEmpty, name.count > ext.count, name.lowercased().hasSuffix(ext) {
            return FS.parent(path) + "/" + String(name.dropLast(ext.count))
        }
        guard let dot = name.lastIndex(of: "."), dot != name.startIndex else { return path }
        return FS.parent(path) + "/" + String(name[..<dot])
    }
}

/// Writes one format from a tree source, through the format's writer. Every
/// output is written under a temporary name next to it and renamed into place when complete.
public struct ImageWriter: Sendable {
    public var options: ImageOptions
    public var runner = ProcessRunner()
    /// Called as an archive output grows (initrd, tar): see `WriteProgress`.
    public var progress: WriteProgress?
    /// A line about what was written (the file system UUID of a disk image...).
    public var note: (@Sendable (String) -> Void)?

    public init(options: ImageOptions) { self.options = options }

    /// Writes `format` to `output` (a file, a directory for `rootfs`, a name prefix for kernel+initrd).
    public func write(_ format: OutputFormat, source: TreeSource, to output: String) async throws -> [BuildOutput] {
        try await write(FormatOutput(format: format, path: output), source: source)
    }

    /// Writes one output; the records are named after `output.kind` when the writer makes one file.
    public func write(_ output: FormatOutput, source: TreeSource) async throws -> [BuildOutput] {
        try Task.checkCancellation()
        let context = FormatWriteContext(options: options, runner: runner, progress: progress, note: note)
        var written = try await output.format.writer.write(source: source, to: output.path, context: context)
        if written.count == 1 { written[0].kind = output.kind }
        return written
    }
}

/// A reproducible tar of the tree: canonical order, mtimes clamped to
/// SOURCE_DATE_EPOCH, owners and modes kept, no atime/ctime, no user names.
public struct TarWriter: Sendable {
    public var compression: Compression
    public var epoch: Int?

    public init(compression: Compression = .none, epoch: Int? = nil) {
        self.compression = compression
        self.epoch = epoch
    }

    @discardableResult
    public func write(source: TreeSource, to output: String) throws -> WriteStats {
        try TreeArchiver(format: .paxRestricted, compression: compression, level: nil, epoch: epoch).write(source: source, to: output)
    }
}

extension FS {
    public static func fileSize(_ path: String) -> Int64 {
        var st = stat()
        return stat(path, &st) == 0 ? Int64(st.st_size) : 0
    }

    /// The bytes of the regular files in a directory written by us (an OCI layout), links not followed.
    public static func treeSize(_ path: String) -> Int64 {
        var total: Int64 = 0
        try? TreeWalker(root: path).walk { entry in
            if entry.fileType == S_IFREG { total += Int64(entry.stat.st_size) }
        }
        return total
    }

    /// Writes `bytes` at `offset` of an open file.
    static func write(_ bytes: [UInt8], to fd: Int32, at offset: Int64, name: String) throws {
        // Borrowed: the caller keeps the descriptor; the write goes through the one loop.
        var borrowed = OwnedFileDescriptor(taking: fd, name: name)
        defer { _ = borrowed.release() }
        try borrowed.writeAll(bytes, at: offset)
    }

    /// Copies a whole file into an open file at `offset`, leaving holes where the source has zeros.
    static func copyFile(_ source: String, into fd: Int32, at offset: Int64) throws {
        let input = open(source, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw RootfsError("cannot read \(source): \(FS.errnoText())") }
        defer { close(input) }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var position: Int64 = 0
        while true {
            let n = buffer.withUnsafeMutableBytes { read(input, $0.baseAddress, $0.count) }
            if n < 0 { if errno == EINTR { continue }; throw RootfsError("cannot read \(source): \(FS.errnoText())") }
            if n == 0 { return }
            if !buffer[0..<n].allSatisfy({ $0 == 0 }) {
                try write(Array(buffer[0..<n]), to: fd, at: offset + position, name: source)
            }
            position += Int64(n)
        }
    }

    /// Copies a file to a new path (written to a temporary name, then renamed).
    public static func copyFile(_ source: String, to destination: String, mode: mode_t = 0o644) throws {
        let temporary = siblingTemporaryPath(for: destination)
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw RootfsError("cannot create \(destination): \(FS.errnoText())") }
        var keep = false
        defer { close(fd); if !keep { unlink(temporary) } }
        let input = open(source, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw RootfsError("cannot read \(source): \(FS.errnoText())") }
        defer { close(input) }
        try copyAll(from: input, to: fd, what: source)
        fchmod(fd, mode)
        try rename(temporary, to: destination)
        keep = true
    }
}
