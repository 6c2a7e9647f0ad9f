// `rootfs-agent dm-create`: sets up the device-mapper device that the kernel parameter
// dm-mod.create="NAME,UUID,MINOR,FLAGS,TABLE" describes, for kernels without
// CONFIG_DM_INIT (Debian's: dm-mod and dm-verity are modules, so the kernel ignores
// the parameter). A stage-1 initrd runs it after loading the modules; the device is
// then /dev/dm-0 as it would have been. One target, as Kata's verity line has.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CAgentSupport

enum DeviceMapper {
    struct Request: Equatable {
        var name: String
        var readOnly: Bool
        var start: UInt64
        var length: UInt64
        var target: String
        var parameters: String
    }

    /// The dm-mod.create value in a kernel command line (the kernel strips its quotes; /proc/cmdline keeps them).
    static func request(in commandLine: String) -> Request? {
        let bytes = Array(commandLine.utf8)
        for key in ["dm-mod.create=\"", "dm_mod.create=\""] {
            let k = Array(key.utf8)
            guard let at = (0...max(0, bytes.count - k.count)).first(where: { i in
                bytes.count >= i + k.count && Array(bytes[i..<i + k.count]) == k && (i == 0 || bytes[i - 1] == 32)
            }) else { continue }
            let rest = bytes[(at + k.count)...]
            guard let end = rest.firstIndex(of: 34) else { return nil }
            return parse(String(decoding: rest[rest.startIndex..<end], as: UTF8.self))
        }
        return nil
    }

    /// `NAME,UUID,MINOR,FLAGS,START LENGTH TARGET PARAMS...` (dm-init's format, one table line).
    static func parse(_ value: String) -> Request? {
        let fields = value.split(separator: ",", maxSplits: 4, omittingEmptySubsequences: false).map(String.init)
        guard fields.count == 5, !fields[0].isEmpty else { return nil }
        let words = fields[4].split(separator: " ", maxSplits: 3, omittingEmptySubsequences: true).map(String.init)
        guard words.count == 4, let start = UInt64(words[0]), let length = UInt64(words[1]), length > 0 else { return nil }
        return Request(name: fields[0], readOnly: fields[3] == "ro", start: start, length: length,
                       target: words[2], parameters: words[3])
    }

    /// Waits (up to `seconds`) for every /dev path the table names: the disk's partitions
    /// appear a moment after their driver binds.
    static func waitForDevices(_ request: Request, seconds: Int = 30) -> String? {
        let paths = request.parameters.split(separator: " ").map(String.init).filter { $0.hasPrefix("/dev/") }
        func missing() -> String? {
            paths.first { path in
                var st = stat()
                return stat(path, &st) != 0 || (st.st_mode & mode_t(S_IFMT)) != mode_t(S_IFBLK)
            }
        }
        for _ in 0..<(seconds * 10) {
            if missing() == nil { return nil }
            usleep(100_000)
        }
        return missing()
    }

    /// Runs the subcommand; returns the exit status.
    static func main() -> Int32 {
        let commandLine = String(decoding: readFile("/proc/cmdline") ?? [], as: UTF8.self)
        guard let request = request(in: commandLine) else {
            writeLine(2, "rootfs-agent dm-create: no usable dm-mod.create=\"NAME,UUID,MINOR,FLAGS,TABLE\" in /proc/cmdline")
            return 2
        }
        if let missing = waitForDevices(request) {
            writeLine(2, "rootfs-agent dm-create: \(missing) did not appear (is the disk's driver loaded?)")
            return 1
        }
        var device: UInt64 = 0
        let result = rootfs_dm_create(request.name, request.readOnly ? 1 : 0, request.start, request.length,
                                      request.target, request.parameters, &device)
        if result != 0 {
            writeLine(2, "rootfs-agent dm-create: \(request.target) device \(request.name): \(String(cString: strerror(-result))) (the kernel log says why)")
            return 1
        }
        // huge_encode_dev: major in bits 8-19, minor in bits 0-7 and 20-31.
        let major = (device >> 8) & 0xfff, minor = (device & 0xff) | ((device >> 12) & 0xfff00)
        writeLine(2, "rootfs-agent dm-create: \(request.name) (\(request.target), \(request.readOnly ? "read-only" : "read-write")) is \(major):\(minor)")
        return 0
    }
}
