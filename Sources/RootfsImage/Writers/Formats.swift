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
    case erofs
    case squashfs
    case kernelInitrd = "kernel+initrd"
    case isoBios = "iso-bios"

    /// The file name ending (none for the directory and the kernel+initrd bundle, which are name prefixes).
    public var fileExtension: String {
        switch self {
        case .rootfs, .kernelInitrd: return ""
        case .raw: return ".img"
        case .isoBios: return ".iso"
        default: return "." + rawValue
        }
    }

    /// What `rootfs build` writes for this format in `directory`.
    public func outputPath(directory: String, name: String) -> String {
        switch self {
        case .rootfs: return directory + "/rootfs"
        case .kernelInitrd: return directory + "/" + name
        default: return directory + "/" + name + fileExtension
        }
    }

    /// The format a file name implies (`rootfs image` without `--format`).
    public static func infer(fromPath path: String) -> OutputFormat? {
        let name = FS.basename(path).lowercased()
        let table: [(String, OutputFormat)] = [
            (".tar.gz", .tarGz), (".tgz", .tarGz), (".tar.zst", .tarZst), (".tzst", .tarZst), (".tar", .tar),
            (".initrd", .initrd), (".cpio", .initrd), (".cpio.gz", .initrd), (".cpio.zst", .initrd),
            (".img", .raw), (".raw", .raw), (".qcow2", .qcow2), (".vhd", .vhd), (".vmdk", .vmdk),
            (".erofs", .erofs), (".squashfs", .squashfs), (".sqfs", .squashfs), (".iso", .isoBios),
        ]
        return table.first { name.hasSuffix($0.0) }?.1
    }

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
    public var compression: Compression = .zstd
    public var freeSpaceMiB = 64
    public var partitionTable: PartitionTable = .mbr
    public var filesystem: FilesystemType = .ext4
    public var dax = false
    /// Which program writes ext4 file systems (`--ext4-writer`).
    public var ext4Writer: Ext4WriterKind = .native
    /// The kernel for kernel+initrd and ISO outputs (default: the tree's /boot/vmlinuz*).
    public var kernel: String?
    public var cmdline = "console=ttyS0"
    public var label = "rootfs"
    public var epoch: Int?

    public init() {}
}

/// Writes one format from a tree source. Every output is written under a
/// temporary name next to it and renamed into place when complete.
public struct ImageWriter: Sendable {
    public var options: ImageOptions
    public var runner = ProcessRunner()

    public init(options: ImageOptions) { self.options = options }

    /// Writes `format` to `output` (a file, a directory for `rootfs`, a name prefix for kernel+initrd).
    public func write(_ format: OutputFormat, source: TreeSource, to output: String) async throws -> [BuildOutput] {
        try Task.checkCancellation()
        let o = options
        switch format {
        case .rootfs:
            let work = try FS.makeSiblingTemporaryDirectory(for: output)
            defer { FS.remove(work) }
            try TreeExtractor(destination: work + "/tree").extract(source)
            if FS.exists(output) && !FS.isMissingOrEmptyDirectory(output) {
                throw RootfsError("\(output) exists and is not empty", hint: "remove it or choose another -o")
            }
            if FS.exists(output) { rmdir(output) }
            try FS.rename(work + "/tree", to: output)
            return [BuildOutput(kind: "rootfs", path: output, bytes: 0)]
        case .tar, .tarGz, .tarZst:
            let compression: Compression = format == .tar ? .none : format == .tarGz ? .gzip : .zstd
            let stats = try TarWriter(compression: compression, epoch: o.epoch).write(source: source, to: output)
            return [BuildOutput(kind: format.rawValue, path: output, bytes: stats.outputBytes)]
        case .initrd:
            let stats = try InitrdWriter(compression: o.compression, epoch: o.epoch).write(source: source, to: output)
            return [BuildOutput(kind: "initrd", path: output, bytes: stats.outputBytes)]
        case .raw:
            let (stats, _) = try await diskWriter().write(source: source, to: output)
            return [BuildOutput(kind: "raw", path: output, bytes: stats.outputBytes)]
        case .qcow2, .vhd, .vmdk:
            let raw = FS.siblingTemporaryPath(for: output) + ".raw"
            defer { unlink(raw) }
            let (_, uuid) = try await diskWriter().write(source: source, to: raw)
            let bytes = try await QemuImgConverter(runner: runner, epoch: o.epoch)
                .convert(raw: raw, to: output, format: format, uuid: uuid)
            return [BuildOutput(kind: format.rawValue, path: output, bytes: bytes)]
        case .erofs, .squashfs:
            try DiskImageWriter.refuseLosingOwnership(source, format: "a \(format.rawValue) image", diskWriter().ownershipFromSource(source))
            let (root, cleanup) = try source.materialized(near: output)
            defer { cleanup() }
            let temporary = FS.siblingTemporaryPath(for: output)
            defer { unlink(temporary) }
            let writer = FilesystemImageWriter(kind: format == .erofs ? .erofs : .squashfs, epoch: o.epoch,
                                               uuid: diskWriter().filesystemUUID(), label: o.label, runner: runner)
            try await writer.run(directory: root, output: temporary)
            try Task.checkCancellation()
            try FS.rename(temporary, to: output)
            return [BuildOutput(kind: format.rawValue, path: output, bytes: FS.fileSize(output))]
        case .kernelInitrd:
            return try await KernelBundleWriter(options: o).write(source: source, prefix: output)
        case .isoBios:
            return try await ISOWriter(options: o, runner: runner).write(source: source, to: output)
        }
    }

    func diskWriter() -> DiskImageWriter {
        var w = DiskImageWriter(freeSpaceMiB: options.freeSpaceMiB, label: options.label, epoch: options.epoch)
        w.partitionTable = options.partitionTable
        w.filesystem = options.filesystem
        w.dax = options.dax
        w.ext4Writer = options.ext4Writer
        w.runner = runner
        return w
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

    /// Writes `bytes` at `offset` of an open file.
    static func write(_ bytes: [UInt8], to fd: Int32, at offset: Int64, name: String) throws {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress! + done, bytes.count - done, off_t(offset + Int64(done))) }
            guard n > 0 else { throw RootfsError("cannot write \(name): \(FS.errnoText())") }
            done += n
        }
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
