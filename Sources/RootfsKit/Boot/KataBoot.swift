import Foundation

/// `rootfs boot --kata`: a disk image booted the way Kata's runtime boots it (QEMU on x86_64):
/// Kata's kernel parameters, systemd told to reach kata-containers.target, and the root on
/// virtio-blk `/dev/vda1` or on an NVDIMM `/dev/pmem0p1`, mounted read-only with Kata's root flags.
public struct KataBoot: Sendable, Equatable {
    /// The device the image is attached as (`--kata-root`).
    public enum Root: String, Sendable, Equatable, CaseIterable {
        /// virtio-blk-pci, the root on /dev/vda1 (Kata's disable_image_nvdimm = true).
        case virtioBlk = "virtio-blk"
        /// An NVDIMM backed by the image file, the root on /dev/pmem0p1 (Kata's default on QEMU).
        case pmem
    }

    public var root: Root
    /// The image starts with Kata's DAX header (pmem): the driver maps it with DAX, so the root is
    /// mounted with `dax` (Kata's NVDIMM parameters; without the header, its no-DAX ones).
    public var dax: Bool

    public init(root: Root = .virtioBlk, dax: Bool = false) {
        self.root = root
        self.dax = dax
    }

    /// The KataBoot for `image`: on pmem, DAX when the image carries a valid DAX header.
    public static func forImage(_ image: String, root: Root) -> KataBoot {
        guard root == .pmem, let file = try? OwnedFileDescriptor(path: image, flags: O_RDONLY),
              let head = try? file.read(count: DAXHeader.encodedBytes, at: 0) else { return KataBoot(root: root) }
        return KataBoot(root: root, dax: DAXHeader.infoBlock(inHead: head, what: image) != nil)
    }

    /// Kata's runtime parameters for x86_64 (its qemu_amd64 kernelParams), then the systemd ones
    /// every Kata guest boots with (KataProfile.kernelParameters).
    public static let runtimeParameters = [
        "tsc=reliable", "no_timer_check", "rcupdate.rcu_expedited=1", "i8042.direct=1", "i8042.dumbkbd=1",
        "i8042.nopnp=1", "i8042.noaux=1", "noreplace-smp", "reboot=k", "cryptomgr.notests", "net.ifnames=0",
        "pci=lastbus=0",
    ]

    /// Kata's root parameters (its commonVirtioblkKernelRootParams, commonNvdimmKernelRootParams and
    /// commonNvdimmNoDAXKernelRootParams): the first partition, read-only; `dax` on an NVDIMM with the header.
    public func rootParameters(filesystem: String) -> [String] {
        var flags = filesystem == "ext4" ? "data=ordered,errors=remount-ro ro" : "ro"
        if root == .pmem && dax && filesystem == "ext4" { flags = "dax," + flags }
        return ["root=\(rootDevice)", "rootflags=\(flags)", "rootfstype=\(filesystem)", "ro"]
    }

    public var rootDevice: String { root == .pmem ? "/dev/pmem0p1" : "/dev/vda1" }

    public var kernelParameters: [String] { Self.runtimeParameters + KataProfile.kernelParameters }

    /// The disk as Kata attaches it (virtio-blk on PCI); -snapshot keeps the image as it was.
    /// `drive`: QEMUBoot's -drive value (id d0, the path made safe there).
    public func diskArguments(drive: String) -> [String] {
        ["-drive", drive, "-device", "virtio-blk-pci,drive=d0", "-snapshot"]
    }

    /// The image as Kata's runtime attaches it on an NVDIMM (its appendNvdimmImage): a read-only
    /// file memory backend and an unarmed nvdimm, on a machine with nvdimm=on. The file is never
    /// written (readonly=on: QEMU opens it read-only). `path` is quoted for QEMU's option list.
    public static func nvdimmArguments(path: String, bytes: Int64) -> [String] {
        ["-machine", "pc,nvdimm=on",
         "-object", "memory-backend-file,id=mem0,mem-path=\(path),size=\(bytes),readonly=on",
         "-device", "nvdimm,id=nv0,memdev=mem0,unarmed=on"]
    }

    /// `-m` for an NVDIMM guest: the NVDIMM sits in the hotplug area, so maxmem holds the RAM and the image
    /// (rounded up to MiB) and one slot is free for it.
    public static func nvdimmMemory(memoryMB: Int, imageBytes: Int64) throws -> String {
        let imageMiB = try Checked.add(imageBytes, (1 << 20) - 1, "the NVDIMM's size") >> 20
        let maxMiB = try Checked.add(Int64(memoryMB), imageMiB, "--memory plus the NVDIMM's size")
        return "\(memoryMB),slots=2,maxmem=\(maxMiB)M"
    }

    /// Refuses an image QEMU cannot map as an NVDIMM (not raw, not whole 4 KiB pages), or whose DAX
    /// header the driver would reject (the namespace must end on 2 MiB), before QEMU starts.
    public static func requireNVDIMMImage(_ path: String, container: String, bytes: Int64, dax: Bool = false) throws {
        guard container == "raw" else {
            throw RootfsError("--kata-root pmem maps the image file as an NVDIMM, so it must be a raw disk image; \(path) is \(container)",
                              hint: "boot the raw image (rootfs build --image / --format raw), or use --kata-root virtio-blk")
        }
        guard bytes > 0, bytes % 4096 == 0 else {
            throw RootfsError("--kata-root pmem: \(path) is \(bytes) bytes, not whole 4 KiB pages, which an NVDIMM needs",
                              hint: "write the image with rootfs (its sizes are whole MiB; --align rounds them further)")
        }
        guard !dax || bytes % DAXHeader.alignment == 0 else {
            throw RootfsError("--kata-root pmem: \(path) has Kata's DAX header but is \(bytes) bytes, not whole 2 MiB, so the nvdimm driver would refuse to map it",
                              hint: "write the image again with rootfs (with --dax its size is whole 2 MiB)")
        }
    }

    /// The modules the root needs when the kernel has them as modules (Debian's cloud kernel: the
    /// virtio PCI transport and virtio_blk; their dependencies come from modinfo).
    public static let rootModules = ["virtio_pci", "virtio_blk"]
    /// An NVDIMM root: the ACPI NFIT driver that finds QEMU's NVDIMM, and the pmem block driver
    /// (libnvdimm, its PFN/DAX support and nd_btt come in as their dependencies).
    public static let pmemModules = ["nfit", "nd_pmem"]

    /// The modules this root needs, for the stage-1 initrd.
    public var moduleNames: [String] { root == .pmem ? Self.pmemModules : Self.rootModules }
}

/// A stage-1 initrd that loads the root's modules and switches to the disk's root: for a kernel
/// whose virtio-blk driver is a module. Made of the host's static busybox, the modules (with their
/// dependencies, from modinfo) and a short /init of our own, written by InitrdWriter.
public struct KataStageOneInitrd: Sendable {
    public var modules: KernelModules
    public var busybox: String
    public var runner = ProcessRunner()
    /// The static rootfs-agent, copied in as /bin/rootfs-agent for `dm-create`: it sets up the
    /// mapping dm-mod.create= describes when the kernel did not (no CONFIG_DM_INIT; VerityBoot.swift).
    public var deviceMapperTool: String?

    public init(modules: KernelModules, busybox: String) {
        self.modules = modules
        self.busybox = busybox
    }

    /// The modules directory next to a kernel unpacked from its package: ROOT/boot/vmlinuz-KVER -> ROOT/lib/modules/KVER.
    public static func modulesDirectory(nextTo kernel: String) -> String? {
        let name = FS.basename(kernel)
        guard name.hasPrefix("vmlinuz-") else { return nil }
        let dir = FS.parent(FS.parent(FS.absolute(kernel))) + "/lib/modules/" + name.dropFirst("vmlinuz-".count)
        return FS.isDirectory(dir) ? dir : nil
    }

    /// The modules to load, dependencies first, as paths inside the modules directory.
    func loadOrder(_ names: [String]) async throws -> [String] {
        let order = (try? String(contentsOfFile: modules.directory + "/modules.order", encoding: .utf8)) ?? ""
        var byName: [String: String] = [:]
        for line in order.split(separator: "\n") {
            let path = String(line)
            if path.hasPrefix("/") || path.split(separator: "/").contains("..") { continue }
            let base = FS.basename(path).split(separator: ".").first.map(String.init) ?? path
            byName[base.replacingOccurrences(of: "-", with: "_")] = path
        }
        var result: [String] = []
        var visiting = Set<String>()
        func visit(_ name: String) async throws {
            let key = name.replacingOccurrences(of: "-", with: "_")
            guard !visiting.contains(key) else { return }
            visiting.insert(key)
            // Not in modules.order: built into the kernel, nothing to load.
            guard let path = byName[key] else { return }
            let depends = try await runner.capture(ToolCommand("modinfo", ["-F", "depends", modules.directory + "/" + path]))
            for dep in depends.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ",") {
                try await visit(String(dep))
            }
            result.append(path)
        }
        for name in names { try await visit(name) }
        return result
    }

    /// Writes the initrd (gzip cpio) to `path`.
    public func write(to path: String, moduleNames: [String] = KataBoot.rootModules) async throws {
        guard FS.isRegularFile(busybox), ELF.isStatic(busybox) else {
            throw RootfsError("the stage-1 initrd needs a static busybox at \(busybox)", hint: "apt-get install busybox-static")
        }
        let load = try await loadOrder(moduleNames)
        // Module paths (modules.order, modinfo) and the kernel version become words of the
        // stage-1 /init script: only plain path characters, never shell syntax or `..`.
        for word in [modules.kernelVersion] + load where !Self.isPlainPath(word) {
            throw RootfsError("the modules directory \(modules.directory) names \(word.debugDescription), which the stage-1 init cannot use",
                              hint: "module paths and the kernel version may hold only letters, digits and . _ + - /")
        }
        let stage = try FS.makeSiblingTemporaryDirectory(for: path)
        defer { FS.remove(stage) }
        let tree = GuestTree(root: stage)
        let installer = AgentInstaller(tree: tree)
        try installer.writeFile("/bin/busybox", contentsOf: busybox, mode: 0o755)
        for module in load {
            let guest = "/lib/modules/\(modules.kernelVersion)/\(module)"
            try OverlayApplier(tree: tree).apply(.file(guestPath: Array(guest.utf8), hostPath: modules.directory + "/" + module))
        }
        if let tool = deviceMapperTool {
            guard FS.isRegularFile(tool), ELF.isStatic(tool) else {
                throw RootfsError("the stage-1 initrd needs the static rootfs-agent at \(tool) to set up dm-verity", hint: "swift build the rootfs-agent product next to rootfs")
            }
            try installer.writeFile("/bin/rootfs-agent", contentsOf: tool, mode: 0o755)
        }
        try installer.writeFile("/init", contents: Array(Self.initScript(kernelVersion: modules.kernelVersion, load: load,
                                                                         deviceMapper: deviceMapperTool != nil).utf8), mode: 0o755)
        for dir in ["/proc", "/sys", "/dev", "/newroot"] { _ = try tree.openDirectory(bytes: Array(dir.utf8), creating: 0o755) }
        try InitrdWriter(compression: .gzip, epoch: 0).write(source: .directory(stage), to: path)
    }

    /// The stage-1 init: load the modules, wait for the root named by root=, mount it with
    /// rootflags=/rootfstype= and hand over to its /sbin/init.
    static func isPlainPath(_ word: String) -> Bool {
        !word.isEmpty && !word.split(separator: "/").contains("..") && word.utf8.allSatisfy {
            ($0 >= 48 && $0 <= 57) || ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || [46, 95, 43, 45, 47].contains($0)
        }
    }

    static func initScript(kernelVersion: String, load: [String], deviceMapper: Bool = false) -> String {
        var inserts = load.map { "$b insmod /lib/modules/\(kernelVersion)/\($0) || echo \"stage-1: insmod \($0) failed\"" }
        if deviceMapper {
            // dm-mod.create= is read by the kernel only with CONFIG_DM_INIT: otherwise the same mapping
            // is made here from the same parameter, so the root (/dev/dm-0) is the same either way.
            inserts.append("[ -b /dev/dm-0 ] || ! $b grep -q 'dm.mod.create=' /proc/cmdline || /bin/rootfs-agent dm-create || echo \"stage-1: device-mapper setup failed\"")
        }
        return """
        #!/bin/busybox sh
        b=/bin/busybox
        $b mount -t proc proc /proc
        $b mount -t sysfs sysfs /sys
        $b mount -t devtmpfs devtmpfs /dev
        \(inserts.joined(separator: "\n"))
        root=; flags=; fstype=ext4; mode=rw
        for p in $($b cat /proc/cmdline); do
            case "$p" in
                root=*) root=${p#root=} ;;
                rootflags=*) flags=${p#rootflags=} ;;
                rootfstype=*) fstype=${p#rootfstype=} ;;
                ro) mode=ro ;;
            esac
        done
        i=0
        while [ ! -b "$root" ] && [ $i -lt 300 ]; do $b sleep 0.1; i=$((i+1)); done
        # rootflags= as Kata writes it ("data=ordered,errors=remount-ro ro"): mount options, commas.
        opts=$(echo "$flags" | $b sed 's/ ro$//; s/ /,/g')
        $b mount -t "$fstype" -o "$mode${opts:+,$opts}" "$root" /newroot || { echo "stage-1: cannot mount $root"; $b poweroff -f; }
        $b umount /sys /proc
        $b mount --move /dev /newroot/dev 2>/dev/null || $b umount /dev
        exec $b switch_root /newroot /sbin/init

        """
    }
}
