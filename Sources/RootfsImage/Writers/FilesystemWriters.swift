import RootfsSupport
import Foundation

/// erofs and squashfs images of a tree directory, made by mkfs.erofs and
/// mksquashfs with fixed times and UUID when SOURCE_DATE_EPOCH is set.
/// Owners come from the directory; when not root (an archive extracted
/// without the right to chown), every file is made root's.
public struct FilesystemImageWriter: Sendable {
    public enum Kind: String, Sendable { case erofs, squashfs }
    public var kind: Kind
    public var epoch: Int?
    public var uuid: String
    public var label: String
    public var runner = ProcessRunner()
    public var allRoot = geteuid() != 0
    /// Leave the tree's /boot out (kernel+squashfs, kernel+erofs: the kernel is a file of its own, as in LinuxKit).
    public var excludeBoot = false
    /// erofs only: the compressor (lz4hc, as Kata's image_builder.sh, unless told otherwise).
    public var erofsCompression: ErofsCompression = .lz4hc

    public init(kind: Kind, epoch: Int?, uuid: String, label: String, runner: ProcessRunner = ProcessRunner(),
                erofsCompression: ErofsCompression = .lz4hc) {
        self.kind = kind
        self.epoch = epoch
        self.uuid = uuid
        self.label = label
        self.runner = runner
        self.erofsCompression = erofsCompression
    }

    public func command(directory: String, output: String) -> ToolCommand {
        switch kind {
        case .erofs:
            var args = ["--quiet", "-U", uuid]
            // Kata's image_builder.sh: `mkfs.erofs -zlz4hc -Enoinline_data`. No inline data keeps each
            // file's tail in its own block (the layout Kata measures); uncompressed keeps mkfs.erofs's defaults.
            if erofsCompression != .none { args += ["-z" + erofsCompression.rawValue, "-Enoinline_data"] }
            if let epoch { args += ["-T", String(epoch)] }
            if allRoot { args.append("--all-root") }
            if excludeBoot { args.append("--exclude-path=boot") }
            return ToolCommand("mkfs.erofs", args + [output, directory])
        case .squashfs:
            // -mem 64M: mksquashfs sizes its caches to a quarter of the host's memory by default (over
            // 300 MB of RSS for a small guest here); the bytes do not depend on it (same SHA-256).
            var args = [directory, output, "-noappend", "-no-progress", "-quiet", "-comp", "zstd", "-reproducible", "-mem", "64M"]
            if allRoot { args.append("-all-root") }
            // -wildcards: "boot" matches the top-level directory only, never a file named so deeper down.
            if excludeBoot { args += ["-wildcards", "-e", "boot"] }
            // mksquashfs 4.5 takes the time of every file and of the file system from SOURCE_DATE_EPOCH
            // (and refuses it together with -mkfs-time/-all-time).
            return ToolCommand("mksquashfs", args, environment: epoch.map { ["SOURCE_DATE_EPOCH": String($0)] } ?? [:])
        }
    }

    public func run(directory: String, output: String) async throws {
        let tool = kind == .erofs ? "mkfs.erofs" : "mksquashfs"
        guard ProcessRunner.which(tool) != nil else {
            throw RootfsError("\(tool) is not installed; it writes the \(kind.rawValue) format",
                              hint: "install \(kind == .erofs ? "erofs-utils" : "squashfs-tools") (apt-get install \(kind == .erofs ? "erofs-utils" : "squashfs-tools"))")
        }
        // The tool reads the directory itself, through any mount inside it.
        try TreeWalker.refuseMounts(inside: directory)
        do {
            try await runner.capture(command(directory: directory, output: output))
        } catch let failure as ToolFailure {
            throw RootfsError("\(tool) could not write \(output) (\(failure.status))", details: failure.outputTail)
        }
    }
}

/// qcow2, VHD and VMDK converted from a raw image with qemu-img. The VHD is a
/// fixed one (what Hyper-V and LCOW boot) with the exact size of the raw disk;
/// with SOURCE_DATE_EPOCH its footer's time stamp and unique id are fixed, so
/// the bytes are reproducible.
public struct QemuImgConverter: Sendable {
    public var runner = ProcessRunner()
    public var epoch: Int?

    public static func command(raw: String, output: String, format: OutputFormat) -> ToolCommand {
        switch format {
        case .vhd: return ToolCommand("qemu-img", ["convert", "-q", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size=on", raw, output])
        case .vmdk: return ToolCommand("qemu-img", ["convert", "-q", "-f", "raw", "-O", "vmdk", raw, output])
        default: return ToolCommand("qemu-img", ["convert", "-q", "-f", "raw", "-O", "qcow2", raw, output])
        }
    }

    public func convert(raw: String, to output: String, format: OutputFormat, uuid: String) async throws -> Int64 {
        guard ProcessRunner.which("qemu-img") != nil else {
            throw RootfsError("qemu-img is not installed; it writes the \(format.rawValue) format", hint: "apt-get install qemu-utils")
        }
        let temporary = FS.siblingTemporaryPath(for: output)
        defer { unlink(temporary) }
        do {
            try await runner.capture(Self.command(raw: raw, output: temporary, format: format))
        } catch let failure as ToolFailure {
            throw RootfsError("qemu-img could not write \(output) (\(failure.status))", details: failure.outputTail)
        }
        if format == .vhd, let epoch { try Self.fixVHDFooter(temporary, epoch: epoch, uuid: uuid) }
        try Task.checkCancellation()
        try FS.rename(temporary, to: output)
        return FS.fileSize(output)
    }

    /// Sets the footer's time stamp (seconds since 2000-01-01) and unique id, and its checksum.
    static func fixVHDFooter(_ path: String, epoch: Int, uuid: String) throws {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw RootfsError("cannot open \(path): \(FS.errnoText())") }
        defer { close(fd) }
        let size = Int64(lseek(fd, 0, SEEK_END))
        var footer = [UInt8](repeating: 0, count: 512)
        guard size >= 512, footer.withUnsafeMutableBytes({ pread(fd, $0.baseAddress, 512, off_t(size - 512)) }) == 512,
              footer[0..<8].elementsEqual(Array("conectix".utf8)) else {
            throw RootfsError("\(path): qemu-img did not write a VHD footer")
        }
        let stamp = UInt32(clamping: max(0, epoch - 946_684_800))
        for i in 0..<4 { footer[24 + i] = UInt8(truncatingIfNeeded: stamp >> (8 * UInt32(3 - i))) }
        footer.replaceSubrange(68..<84, with: GPT.guidBytes(uuid))
        for i in 64..<68 { footer[i] = 0 }
        let sum = ~footer.reduce(UInt32(0)) { $0 &+ UInt32($1) }
        for i in 0..<4 { footer[64 + i] = UInt8(truncatingIfNeeded: sum >> (8 * UInt32(3 - i))) }
        try FS.write(footer, to: fd, at: size - 512, name: path)
    }
}
