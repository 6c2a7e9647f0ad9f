import RootfsSupport
import Foundation

/// Finds the kernel for kernel+initrd and ISO outputs: `--kernel FILE`, or the
/// newest-named /boot/vmlinuz* regular file of the tree (read from the source,
/// never through a host path).
public struct KernelLocator {
    public var explicit: String?

    /// A host file holding the kernel, and a clean-up for the temporary copy.
    public func locate(in source: TreeSource, near: String) throws -> (path: String, cleanup: @Sendable () -> Void) {
        if let explicit {
            guard FS.isRegularFile(explicit) else {
                throw RootfsError("--kernel \(explicit) is not a file", hint: "give the path of a kernel image (vmlinuz/bzImage)")
            }
            return (FS.absolute(explicit), {})
        }
        guard let chosen = try Self.candidate(in: source) else {
            throw RootfsError("the tree (\(source.path)) has no kernel in /boot",
                              hint: "pass --kernel FILE, or install a kernel package in the distro (EXTRA_PKG)")
        }
        let copy = FS.siblingTemporaryPath(for: near) + ".kernel"
        var written = false
        try source.walk { item in
            guard item.path == chosen, !written else { return }
            let fd = open(copy, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw RootfsError("cannot create \(copy): \(FS.errnoText())") }
            defer { close(fd) }
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
            defer { buffer.deallocate() }
            var offset: Int64 = 0
            try item.copyContent(buffer: buffer) { chunk in
                try FS.write(Array(chunk), to: fd, at: offset, name: copy)
                offset += Int64(chunk.count)
            }
            written = true
        }
        return (copy, { unlink(copy) })
    }

    /// The tree's kernel: the newest-named /boot/vmlinuz* regular file (nil: none).
    public static func candidate(in source: TreeSource) throws -> [UInt8]? {
        var candidates: [[UInt8]] = []
        try source.walk { item in
            let p = item.pathString
            if item.fileType == FileType.reg, p.hasPrefix("boot/vmlinuz"), !p.dropFirst(5).contains("/") { candidates.append(item.path) }
        }
        return candidates.sorted(by: canonicalPrecedes).last
    }
}

/// LinuxKit's kernel+initrd output: `<name>-kernel`, `<name>-initrd.img`
/// (cpio, /init -> /sbin/init) and `<name>-cmdline`, each renamed into place when complete.
public struct KernelBundleWriter: Sendable {
    public var options: ImageOptions

    public func paths(prefix: String) -> (kernel: String, initrd: String, cmdline: String) {
        (prefix + "-kernel", prefix + "-initrd.img", prefix + "-cmdline")
    }

    /// `NAME-cmdline`, written to a temporary name and renamed (kernel+squashfs and kernel+erofs too).
    public static func writeCommandLine(_ cmdline: String, to path: String) throws {
        let temporary = FS.siblingTemporaryPath(for: path)
        try Data(cmdline.utf8).write(to: URL(fileURLWithPath: temporary))
        try FS.rename(temporary, to: path)
    }

    public func write(source: TreeSource, prefix: String) async throws -> [BuildOutput] {
        let p = paths(prefix: prefix)
        let (kernel, cleanup) = try KernelLocator(explicit: options.kernel).locate(in: source, near: p.kernel)
        defer { cleanup() }
        let stats = try InitrdWriter(compression: options.compression, epoch: options.epoch).write(source: source, to: p.initrd)
        try FS.copyFile(kernel, to: p.kernel)
        try Self.writeCommandLine(options.cmdline, to: p.cmdline)
        return [BuildOutput(kind: "kernel", path: p.kernel, bytes: FS.fileSize(p.kernel)),
                BuildOutput(kind: "initrd", path: p.initrd, bytes: stats.outputBytes),
                BuildOutput(kind: "cmdline", path: p.cmdline, bytes: FS.fileSize(p.cmdline))]
    }
}

/// A BIOS-bootable ISO 9660 image (isolinux, El Torito, hybrid MBR so it also
/// boots as a disk) holding /boot/kernel and /boot/initrd.img, made by xorriso.
/// SOURCE_DATE_EPOCH fixes xorriso's time stamps and volume id.
public struct ISOWriter: Sendable {
    public var options: ImageOptions
    public var runner = ProcessRunner()

    public static let isolinuxBin = "/usr/lib/ISOLINUX/isolinux.bin"
    public static let hybridMBR = "/usr/lib/ISOLINUX/isohdpfx.bin"
    public static let ldlinux = "/usr/lib/syslinux/modules/bios/ldlinux.c32"

    public static func config(cmdline: String) -> String {
        """
        SERIAL 0 115200
        DEFAULT linux
        PROMPT 0
        TIMEOUT 0
        LABEL linux
          KERNEL /boot/kernel
          INITRD /boot/initrd.img
          APPEND \(cmdline)

        """
    }

    public static func command(staging: String, output: String, epoch: Int?) -> ToolCommand {
        var env: [String: String] = [:]
        if let epoch { env["SOURCE_DATE_EPOCH"] = String(epoch) }
        return ToolCommand("xorriso", [
            "-as", "mkisofs", "-quiet", "-o", output, "-R", "-J", "-V", "ROOTFS",
            "-isohybrid-mbr", hybridMBR, "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat",
            "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table", staging,
        ], environment: env)
    }

    /// Refuses a host without isolinux or xorriso, before anything is written.
    public static func requireTools(format: String) throws {
        for file in [Self.isolinuxBin, Self.hybridMBR, Self.ldlinux] where !FS.isRegularFile(file) {
            throw RootfsError("\(file) is missing; the \(format) format boots with isolinux",
                              hint: "apt-get install isolinux syslinux-common")
        }
        guard ProcessRunner.which("xorriso") != nil else {
            throw RootfsError("xorriso is not installed; it writes the \(format) format", hint: "apt-get install xorriso")
        }
    }

    /// Fills `staging` with what the BIOS boots: isolinux, /boot/kernel and /boot/initrd.img
    /// (also the hybrid ISO's BIOS half). `work`: a scratch directory for the kernel's copy.
    public func stage(source: TreeSource, staging: String, work: String) throws {
        try FS.makeDirectories(staging + "/isolinux")
        try FS.makeDirectories(staging + "/boot")
        let (kernel, cleanup) = try KernelLocator(explicit: options.kernel).locate(in: source, near: work + "/kernel")
        defer { cleanup() }
        try FS.copyFile(kernel, to: staging + "/boot/kernel")
        try InitrdWriter(compression: options.compression == .none ? .gzip : options.compression, epoch: options.epoch)
            .write(source: source, to: staging + "/boot/initrd.img")
        try FS.copyFile(Self.isolinuxBin, to: staging + "/isolinux/isolinux.bin")
        try FS.copyFile(Self.ldlinux, to: staging + "/isolinux/ldlinux.c32")
        try Self.config(cmdline: options.cmdline).write(toFile: staging + "/isolinux/isolinux.cfg", atomically: false, encoding: .utf8)
        if let epoch = options.epoch {
            for p in ["boot/kernel", "boot/initrd.img", "isolinux/isolinux.bin", "isolinux/ldlinux.c32", "isolinux/isolinux.cfg", "isolinux", "boot", ""] {
                var times = [timespec(tv_sec: epoch, tv_nsec: 0), timespec(tv_sec: epoch, tv_nsec: 0)]
                utimensat(AT_FDCWD, staging + "/" + p, &times, 0)
            }
        }
    }

    public func write(source: TreeSource, to output: String) async throws -> [BuildOutput] {
        try Self.requireTools(format: "iso-bios")
        let work = try FS.makeSiblingTemporaryDirectory(for: output)
        defer { FS.remove(work) }
        let staging = work + "/iso"
        try stage(source: source, staging: staging, work: work)
        let temporary = work + "/out.iso"
        do {
            try await runner.capture(Self.command(staging: staging, output: temporary, epoch: options.epoch))
        } catch let failure as ToolFailure {
            throw RootfsError("xorriso could not write \(output) (\(failure.status))", details: failure.outputTail)
        }
        try Task.checkCancellation()
        try FS.rename(temporary, to: output)
        return [BuildOutput(kind: "iso-bios", path: output, bytes: FS.fileSize(output))]
    }
}
