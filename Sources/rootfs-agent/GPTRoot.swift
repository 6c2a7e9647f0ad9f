// `rootfs-agent gpt-root` and the stage-1 init of raw-efi / qcow2-efi disks: the root
// partition found by its Discoverable Partitions type (AgentProtocol's DiscoverableRoot),
// as systemd-gpt-auto-generator finds it in a systemd initrd, so the kernel command line
// needs no root=. The initrd is this static binary as /init (plus /etc/initrd-release):
// no busybox, no udev, no modules (ext4, NVMe and virtio-blk are built into Debian's
// cloud kernel).
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import AgentProtocol
import CAgentSupport

enum GPTRoot {
    static var machine: String {
        #if arch(x86_64)
        return "x86_64"
        #elseif arch(arm64)
        return "aarch64"
        #elseif arch(s390x)
        return "s390x"
        #elseif arch(powerpc64le)
        return "ppc64le"
        #else
        return "unknown"
        #endif
    }

    struct Root {
        var device: String
        var readOnly: Bool
    }

    /// Names in a directory (no . and ..), sorted so the scan order does not depend on readdir.
    static func entries(_ path: String) -> [String] {
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: entry.pointee.d_name) { pointer in
                pointer.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    static func number(_ path: String) -> UInt64? {
        guard let bytes = readFile(path) else { return nil }
        return UInt64(String(decoding: bytes, as: UTF8.self).trimmingWhitespace)
    }

    /// Every disk under /sys/block with a root partition of this machine's type. Errors: a
    /// disk whose GPT is refused (named, so the console says why the root was not found).
    static func scan() -> (roots: [Root], errors: [String]) {
        guard let type = DiscoverableRoot.rootTypes[machine] else { return ([], ["no root partition type for \(machine)"]) }
        var roots: [Root] = [], errors: [String] = []
        for disk in entries("/sys/block") where !["loop", "ram", "zram", "dm-", "md", "sr"].contains(where: { disk.hasPrefix($0) }) {
            guard let sectors = number("/sys/block/\(disk)/size"), sectors.multipliedReportingOverflow(by: 512).overflow == false,
                  let sectorSize = number("/sys/block/\(disk)/queue/logical_block_size"), sectorSize <= 4096 else { continue }
            let fd = open("/dev/" + disk, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            let result = DiscoverableRoot.find(rootType: type, sectorSize: Int(sectorSize), diskBytes: sectors * 512) { offset, count in
                guard offset <= UInt64(Int64.max) else { return nil }
                var buffer = [UInt8](repeating: 0, count: count)
                let done = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offset)) }
                return done == count ? buffer : nil
            }
            switch result {
            case .failure(let error): errors.append("/dev/\(disk): \(error.text)")
            case .success(nil): continue
            case .success(let found?):
                // The partition's device: the child of the disk whose `partition` file holds its number.
                let child = entries("/sys/block/\(disk)").first { number("/sys/block/\(disk)/\($0)/partition") == UInt64(found.number) }
                if let child { roots.append(Root(device: "/dev/" + child, readOnly: found.readOnly)) }
                else { errors.append("/dev/\(disk): partition \(found.number) has the root type but the kernel shows no such partition") }
            }
        }
        return (roots, errors)
    }

    /// Waits up to `seconds` for exactly one root (disks appear a moment after their driver binds).
    static func wait(seconds: Int = 30) -> Result<Root, DiscoverableRoot.GPTError> {
        var last: (roots: [Root], errors: [String]) = ([], [])
        for _ in 0..<(seconds * 10) {
            last = scan()
            if last.roots.count == 1 { return .success(last.roots[0]) }
            if last.roots.count > 1 {
                return .failure(.init("more than one disk has a root partition: " + last.roots.map { $0.device }.joined(separator: ", ")))
            }
            usleep(100_000)
        }
        let why = last.errors.isEmpty ? "" : " (" + last.errors.joined(separator: "; ") + ")"
        return .failure(.init("no partition of type \(DiscoverableRoot.rootTypes[machine] ?? "?") (\(machine) root) on any disk\(why)"))
    }

    /// `rootfs-agent gpt-root`: prints the root partition's /dev name.
    static func main() -> Int32 {
        switch wait() {
        case .success(let root):
            writeLine(1, root.device)
            return 0
        case .failure(let error):
            writeLine(2, "rootfs-agent gpt-root: \(error.text)")
            return 1
        }
    }

    /// The initrd GPTRootInitrd writes: /etc/initrd-release with ID=rootfs-stage1.
    static func isStageOneInitrd() -> Bool {
        guard let bytes = readFile("/etc/initrd-release") else { return false }
        return String(decoding: bytes, as: UTF8.self).split(separator: "\n").contains("ID=rootfs-stage1")
    }

    /// The stage-1 init: mount the API file systems, find the root, mount it on /newroot and
    /// switch to it (move the mounts, make it /, exec its /sbin/init: systemd or the agent).
    static func stageOne() -> Never {
        mountFilesystem("proc", on: "/proc", flags: UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC))
        mountFilesystem("sysfs", on: "/sys", flags: UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC))
        mountFilesystem("devtmpfs", on: "/dev", flags: UInt(MS_NOSUID), options: "mode=0755")
        let console = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC)
        if console >= 0 { consoleFD = console }
        func fail(_ text: String) -> Never {
            writeLine(consoleFD, "rootfs-agent stage-1: " + text)
            powerOff()
        }
        let root: Root
        switch wait() {
        case .success(let r): root = r
        case .failure(let error): fail(error.text)
        }
        makeDirectories("/newroot")
        let flags = root.readOnly ? UInt(MS_RDONLY) : 0
        // The specification leaves the file system to be probed: the ones rootfs writes, in turn.
        let filesystems: [String] = ["ext4", "erofs", "xfs", "squashfs", "btrfs"]
        guard filesystems.contains(where: { type in mount(root.device, "/newroot", type, flags, nil) == 0 }) else {
            fail("cannot mount \(root.device): \(errorText())")
        }
        writeLine(consoleFD, "rootfs-agent stage-1: root \(root.device) (GPT root type, \(root.readOnly ? "read-only" : "read-write")), switching to /sbin/init")
        for api in ["/dev", "/proc", "/sys"] {
            makeDirectories("/newroot" + api)
            if mount(api, "/newroot" + api, nil, UInt(MS_MOVE), nil) != 0 { umount2(api, Int32(MNT_DETACH)) }
        }
        guard chdir("/newroot") == 0, mount(".", "/", nil, UInt(MS_MOVE), nil) == 0, chroot(".") == 0, chdir("/") == 0 else {
            fail("cannot switch to \(root.device): \(errorText())")
        }
        // The kernel's init arguments (now that /proc is there to read them from).
        let argv = ["/sbin/init"] + commandLineArguments().dropFirst()
        _ = withCStringArray(argv.map { Array($0.utf8) }) { execv("/sbin/init", $0) }
        fail("cannot run /sbin/init on \(root.device): \(errorText())")
    }
}

extension String {
    var trimmingWhitespace: String {
        var s = Substring(self)
        while let c = s.first, c == " " || c == "\n" || c == "\t" { s.removeFirst() }
        while let c = s.last, c == " " || c == "\n" || c == "\t" { s.removeLast() }
        return String(s)
    }
}
