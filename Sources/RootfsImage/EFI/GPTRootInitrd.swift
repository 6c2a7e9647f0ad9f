import RootfsSupport
import Glibc

/// The stage-1 initrd of raw-efi and qcow2-efi: the static rootfs-agent as /init, which finds
/// the root partition by its Discoverable Partitions type (`rootfs-agent gpt-root`, the agent's
/// GPTRoot.swift), mounts it and switches to its /sbin/init, so the UKI's command line has no
/// root=. `/etc/initrd-release` marks it as an initrd (systemd's convention), which is how the
/// agent knows to be stage 1. No busybox and no modules: Debian's cloud kernel has ext4, NVMe
/// and virtio-blk built in (KataStageOneInitrd in RootfsKit is the module-loading stage 1).
/// Written here, below RootfsKit, because the EFI disk writer needs it.
public struct GPTRootInitrd: Sendable {
    /// The static rootfs-agent.
    public var agent: String
    public var epoch: Int?

    public init(agent: String, epoch: Int?) {
        self.agent = agent
        self.epoch = epoch
    }

    /// The reference agent next to the rootfs executable (where `swift build` puts both),
    /// or in an install's libexec/rootfs.
    public static func referenceAgent(format: String) throws -> String {
        let path = InstallLayout.agent(named: "rootfs-agent") ?? (FS.executableDirectory() ?? ".") + "/rootfs-agent"
        guard FS.isRegularFile(path), ELF.isStatic(path) else {
            throw RootfsError("\(format) boots through a stage-1 initrd made of the static rootfs-agent, and \(path) is not one",
                              hint: "build it next to rootfs with `swift build --product rootfs-agent`")
        }
        return path
    }

    /// The initrd's /etc/initrd-release.
    static let initrdRelease = "NAME=\"rootfs stage-1\"\nID=rootfs-stage1\n"

    /// Writes the initrd (gzip cpio) to `path`.
    public func write(to path: String) throws {
        // It runs before any library is there: a dynamic binary would not start and the kernel would panic.
        guard FS.isRegularFile(agent), ELF.isStatic(agent) else {
            throw RootfsError("the stage-1 initrd needs the static rootfs-agent; \(agent) is not a static executable",
                              hint: "build it with `swift build --product rootfs-agent`")
        }
        let stage = try FS.makeSiblingTemporaryDirectory(for: path)
        defer { FS.remove(stage) }
        for dir in ["etc", "proc", "sys", "dev", "newroot"] { try FS.makeDirectories(stage + "/" + dir) }
        try FS.copyFile(agent, to: stage + "/init")
        guard chmod(stage + "/init", 0o755) == 0 else { throw RootfsError("cannot make \(stage)/init executable: \(FS.errnoText())") }
        var release = try OwnedFileDescriptor(path: stage + "/etc/initrd-release", flags: O_WRONLY | O_CREAT | O_EXCL, mode: 0o644, name: "initrd-release")
        try release.writeAll(Array(Self.initrdRelease.utf8), at: 0)
        try release.close()
        try InitrdWriter(compression: .gzip, epoch: epoch ?? 0).write(source: .directory(stage), to: path)
    }
}
