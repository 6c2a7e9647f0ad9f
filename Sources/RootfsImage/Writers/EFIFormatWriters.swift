import RootfsSupport
import Foundation

/// What every EFI format starts from: the kernel (`--kernel` or the tree's /boot, through
/// KernelLocator), the guest's os-release and the UKI's checks (the stub is there, the
/// kernel has an EFI stub), all before the slow initrd is written and before any output exists.
struct EFIInputs {
    var kernel: String
    var osRelease: [UInt8]
    var cleanup: @Sendable () -> Void

    /// os-release is read from the tree: /etc/os-release when it is a file, else /usr/lib/os-release
    /// (what /etc/os-release links to on most distros); empty when neither is. At most 64 KiB.
    static func osRelease(of source: TreeSource) throws -> [UInt8] {
        var found: [String: [UInt8]] = [:]
        let limit: Int64 = 64 << 10
        try source.walk { item in
            let p = item.pathString
            guard item.fileType == FileType.reg, p == "etc/os-release" || p == "usr/lib/os-release", item.size <= limit else { return }
            var bytes: [UInt8] = []
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 << 10, alignment: 16)
            defer { buffer.deallocate() }
            try item.copyContent(buffer: buffer) { chunk in bytes += chunk }
            found[p] = bytes
        }
        return found["etc/os-release"] ?? found["usr/lib/os-release"] ?? []
    }

    static func prepare(source: TreeSource, options: ImageOptions, work: String, format: OutputFormat) throws -> EFIInputs {
        let located: (path: String, cleanup: @Sendable () -> Void)
        do {
            located = try KernelLocator(explicit: options.kernel).locate(in: source, near: work + "/kernel")
        } catch let error as RootfsError {
            throw RootfsError("\(format.rawValue) needs a kernel: \(error.message)", hint: error.hint)
        }
        let inputs = EFIInputs(kernel: located.path, osRelease: try osRelease(of: source), cleanup: located.cleanup)
        do {
            // The stub and the kernel are checked here (no initrd yet: it is the slow part).
            _ = try UnifiedKernelImage(kernel: inputs.kernel, initrd: nil, commandLine: options.cmdline, osRelease: inputs.osRelease).layout()
        } catch {
            inputs.cleanup()
            throw error
        }
        return inputs
    }

    /// The initrd the UKI carries, written by InitrdWriter (gzip when no compression is asked:
    /// the kernel's own unpacker reads it either way).
    static func writeInitrd(source: TreeSource, options: ImageOptions, to path: String) throws {
        try InitrdWriter(compression: options.compression, epoch: options.epoch).write(source: source, to: path)
    }
}

/// `uki`: see UnifiedKernelImage. The initrd is the whole tree (InitrdWriter), the command line `--cmdline`.
public struct UKIFormatWriter: FormatWriter {
    public func write(source: TreeSource, to output: String, context: FormatWriteContext) async throws -> [BuildOutput] {
        let options = context.options
        let work = try FS.makeSiblingTemporaryDirectory(for: output)
        defer { FS.remove(work) }
        let inputs = try EFIInputs.prepare(source: source, options: options, work: work, format: .uki)
        defer { inputs.cleanup() }
        try EFIInputs.writeInitrd(source: source, options: options, to: work + "/initrd")
        try Task.checkCancellation()
        let layout = try UnifiedKernelImage(kernel: inputs.kernel, initrd: work + "/initrd", commandLine: options.cmdline,
                                            osRelease: inputs.osRelease).write(to: output)
        context.note?("unified kernel image: \(layout.sections.map { $0.section.nameText }.joined(separator: " ")) on systemd's EFI stub")
        return [BuildOutput(kind: "uki", path: output, bytes: FS.fileSize(output))]
    }
}

/// `iso-efi`, `iso-efi-initrd`, `iso-hybrid`: see EFIISO.
public struct EFIISOFormatWriter: FormatWriter {
    public var format: OutputFormat

    public func write(source: TreeSource, to output: String, context: FormatWriteContext) async throws -> [BuildOutput] {
        let options = context.options
        if format == .isoHybrid { try ISOWriter.requireTools(format: format.rawValue) }
        if format == .isoEFIInitrd && !FS.isRegularFile(EFIISO.systemdBoot) {
            throw RootfsError("\(EFIISO.systemdBoot) is missing: iso-efi-initrd boots the kernel and its initrd with systemd-boot",
                              hint: "apt-get install systemd-boot-efi")
        }
        let work = try FS.makeSiblingTemporaryDirectory(for: output)
        defer { FS.remove(work) }
        let inputs = try EFIInputs.prepare(source: source, options: options, work: work, format: format)
        defer { inputs.cleanup() }
        var biosStaging: String?
        let initrd: String
        if format == .isoHybrid {
            // One initrd for both halves: isolinux's /boot/initrd.img is the UKI's .initrd too.
            let staging = work + "/iso"
            var bios = ISOWriter(options: options, runner: context.runner)
            bios.options.kernel = inputs.kernel
            try bios.stage(source: source, staging: staging, work: work)
            biosStaging = staging
            initrd = staging + "/boot/initrd.img"
        } else {
            initrd = work + "/initrd"
            try EFIInputs.writeInitrd(source: source, options: options, to: initrd)
        }
        try Task.checkCancellation()
        // iso-efi-initrd: no UKI; systemd-boot loads the kernel and the initrd beside it (LinuxKit's uses GRUB).
        let outside = format == .isoEFIInitrd
        let uki = outside ? nil : UnifiedKernelImage(kernel: inputs.kernel, initrd: initrd, commandLine: options.cmdline,
                                                     osRelease: inputs.osRelease)
        var iso = EFIISO(uki: uki, epoch: options.epoch)
        iso.runner = context.runner
        if outside {
            iso.espFiles = EFIISO.bootLoaderFiles(bootLoader: EFIISO.systemdBoot, kernel: inputs.kernel, initrd: initrd,
                                                  commandLine: options.cmdline)
        }
        try await iso.write(to: output, biosStaging: biosStaging)
        return [BuildOutput(kind: format.rawValue, path: output, bytes: FS.fileSize(output))]
    }
}

/// `raw-efi`, `qcow2-efi`: see EFIDisk (the root partition: ext4 from Ext4Writer, `--label`,
/// `--free-space`; the UKI's initrd: GPTRootInitrd); qcow2-efi is that disk converted by qemu-img.
public struct EFIDiskFormatWriter: FormatWriter {
    public var format: OutputFormat

    public func write(source: TreeSource, to output: String, context: FormatWriteContext) async throws -> [BuildOutput] {
        let options = context.options
        if options.filesystem != .ext4 {
            throw RootfsError("\(format.rawValue) writes an ext4 root partition; --filesystem \(options.filesystem.rawValue) is not supported for it",
                              hint: "drop --filesystem, or write --format raw with --partition-table gpt")
        }
        let work = try FS.makeSiblingTemporaryDirectory(for: output)
        defer { FS.remove(work) }
        let inputs = try EFIInputs.prepare(source: source, options: options, work: work, format: format)
        defer { inputs.cleanup() }
        // The UKI's initrd: the stage-1 rootfs-agent, which finds the root by its GPT type (no root=).
        try GPTRootInitrd(agent: try GPTRootInitrd.referenceAgent(format: format.rawValue), epoch: options.epoch).write(to: work + "/stage1.initrd")
        var disk = EFIDisk(kernel: inputs.kernel, initrd: work + "/stage1.initrd", commandLine: options.cmdline,
                           osRelease: inputs.osRelease, epoch: options.epoch)
        disk.label = options.label
        disk.freeSpaceMiB = options.freeSpaceMiB
        let raw = format == .rawEFI ? output : work + "/disk.raw"
        let written = try disk.write(source: source, to: raw)
        context.note?("GPT: ESP (UKI with the stage-1 initrd as \\EFI\\BOOT\\BOOTX64.EFI) and the x86-64 root (PARTUUID \(written.rootPartitionUUID.lowercased())), \(formatBytes(written.diskBytes))")
        guard format == .qcow2EFI else { return [BuildOutput(kind: format.rawValue, path: output, bytes: written.diskBytes)] }
        let bytes = try await QemuImgConverter(runner: context.runner, epoch: options.epoch)
            .convert(raw: raw, to: output, format: .qcow2, uuid: written.rootPartitionUUID)
        return [BuildOutput(kind: format.rawValue, path: output, bytes: bytes)]
    }
}

/// LinuxKit's `kernel+squashfs` and `kernel+erofs`: `NAME-kernel`, `NAME-squashfs.img` or
/// `NAME-erofs.img` (the tree without /boot, as LinuxKit leaves it out) and `NAME-cmdline`.
public struct KernelFilesystemBundleWriter: FormatWriter {
    public var kind: FilesystemImageWriter.Kind

    public static func paths(prefix: String, kind: FilesystemImageWriter.Kind) -> (kernel: String, image: String, cmdline: String) {
        (prefix + "-kernel", prefix + "-\(kind.rawValue).img", prefix + "-cmdline")
    }

    public func write(source: TreeSource, to prefix: String, context: FormatWriteContext) async throws -> [BuildOutput] {
        let p = Self.paths(prefix: prefix, kind: kind)
        let (kernel, cleanup) = try KernelLocator(explicit: context.options.kernel).locate(in: source, near: p.kernel)
        defer { cleanup() }
        var image = FilesystemImageFormatWriter(kind: kind)
        image.excludeBoot = true
        let written = try await image.write(source: source, to: p.image, context: context)
        try FS.copyFile(kernel, to: p.kernel)
        try KernelBundleWriter.writeCommandLine(context.options.cmdline, to: p.cmdline)
        return [BuildOutput(kind: "kernel", path: p.kernel, bytes: FS.fileSize(p.kernel)),
                BuildOutput(kind: kind.rawValue, path: p.image, bytes: written.first?.bytes ?? FS.fileSize(p.image)),
                BuildOutput(kind: "cmdline", path: p.cmdline, bytes: FS.fileSize(p.cmdline))]
    }
}

/// LinuxKit's `tar-kernel-initrd`: `NAME-initrd.tar` holding `kernel`, `initrd.img` and `cmdline`
/// (root's, mode 0644, stamped with SOURCE_DATE_EPOCH).
public struct KernelInitrdTarWriter: FormatWriter {
    public func write(source: TreeSource, to output: String, context: FormatWriteContext) async throws -> [BuildOutput] {
        let options = context.options
        let work = try FS.makeSiblingTemporaryDirectory(for: output)
        defer { FS.remove(work) }
        let (kernel, cleanup) = try KernelLocator(explicit: options.kernel).locate(in: source, near: work + "/kernel")
        defer { cleanup() }
        try InitrdWriter(compression: options.compression, epoch: options.epoch).write(source: source, to: work + "/initrd.img")
        try Task.checkCancellation()
        try OCIImageWriter(layout: .oci, epoch: options.epoch).writeTar([
            ("kernel", .file(kernel)), ("initrd.img", .file(work + "/initrd.img")), ("cmdline", .bytes(Array(options.cmdline.utf8))),
        ], to: output)
        return [BuildOutput(kind: "tar-kernel-initrd", path: output, bytes: FS.fileSize(output))]
    }
}
