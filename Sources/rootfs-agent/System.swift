// Thin wrappers over the C library for the agent. No Foundation here: the
// agent is linked fully static and must stay small.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CAgentSupport

#if hasFeature(Embedded)
// Embedded Swift (the agent for other architectures, scripts/build-agent.sh) has no
// Glibc module: the C library comes in through CAgentSupport's header, and errno is
// a macro there that Swift does not import.
var errno: Int32 { __errno_location().pointee }

/// The agent's own arguments: Embedded Swift has no CommandLine.
func commandLineArguments() -> [String] {
    let bytes = readFile("/proc/self/cmdline") ?? []
    return bytes.split(separator: 0, omittingEmptySubsequences: false).dropLast().map {
        String(decoding: $0, as: UTF8.self)
    }
}

func open(_ path: UnsafePointer<CChar>, _ flags: Int32) -> Int32 { rootfs_agent_open(path, flags, 0) }
func fcntl(_ fd: Int32, _ command: Int32) -> Int32 { rootfs_agent_fcntl(fd, command) }
func ioctl(_ fd: Int32, _ request: UInt, _ argument: UnsafeMutableRawPointer?) -> Int32 {
    rootfs_agent_ioctl(fd, request, argument)
}
func ioctl(_ fd: Int32, _ request: UInt, _ argument: Int32) -> Int32 {
    rootfs_agent_ioctl(fd, request, UnsafeMutableRawPointer(bitPattern: Int(argument)))
}
#else
func commandLineArguments() -> [String] { CommandLine.arguments }
#endif

/// The C library's errno as text.
func errorText(_ code: Int32 = errno) -> String {
    String(cString: strerror(code))
}

/// Writes all of `bytes` to `fd`, retrying on EINTR and short writes.
func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
    var offset = 0
    while offset < bytes.count {
        let written = bytes.withUnsafeBytes { buffer in
            write(fd, buffer.baseAddress! + offset, buffer.count - offset)
        }
        if written < 0 {
            if errno == EINTR { continue }
            return
        }
        offset += written
    }
}

func writeLine(_ fd: Int32, _ text: String) {
    writeAll(fd, Array((text + "\n").utf8))
}

/// Reads a whole (small) file, or nil.
func readFile(_ path: String) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var result: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count < 0 { if errno == EINTR { continue }; return nil }
        if count == 0 { break }
        result += buffer[0..<count]
    }
    return result
}

func exists(_ path: String) -> Bool {
    access(path, F_OK) == 0
}

func isDirectory(_ path: String) -> Bool {
    var info = stat()
    return stat(path, &info) == 0 && (info.st_mode & mode_t(S_IFMT)) == mode_t(S_IFDIR)
}

/// Whether `path` is a mount point: its device differs from its parent's,
/// or it is the root of the namespace.
func isMountPoint(_ path: String) -> Bool {
    var here = stat(), parent = stat()
    guard stat(path, &here) == 0, stat(path + "/..", &parent) == 0 else { return false }
    if here.st_dev != parent.st_dev { return true }
    return here.st_ino == parent.st_ino
}

/// Creates a directory and its parents; existing ones are fine.
func makeDirectories(_ path: String, mode: mode_t = 0o755) {
    var prefix = ""
    for part in path.split(separator: "/") {
        prefix += "/" + part
        if mkdir(prefix, mode) != 0 && errno != EEXIST {
            return
        }
    }
}

/// Opens a device such as `ttyS1` or `/dev/ttyS1` for writing (and reading).
func openDevice(_ name: String, flags: Int32 = O_RDWR | O_NOCTTY | O_CLOEXEC) -> Int32 {
    let path = name.hasPrefix("/") ? name : "/dev/" + name
    return open(path, flags)
}

/// Puts a terminal into raw mode so bytes pass unchanged (no \n -> \r\n).
func makeRaw(_ fd: Int32) {
    guard isatty(fd) == 1 else { return }
    var settings = termios()
    guard tcgetattr(fd, &settings) == 0 else { return }
    cfmakeraw(&settings)
    _ = tcsetattr(fd, TCSANOW, &settings)
}

/// Makes a C string array for execve: the pointers live until `body` returns.
func withCStringArray<R>(_ strings: [[UInt8]], _ body: (UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { bytes in
        let pointer = UnsafeMutablePointer<CChar>.allocate(capacity: bytes.count + 1)
        for (index, byte) in bytes.enumerated() { pointer[index] = CChar(bitPattern: byte) }
        pointer[bytes.count] = 0
        return pointer
    }
    pointers.append(nil)
    defer { for pointer in pointers { pointer?.deallocate() } }
    return pointers.withUnsafeMutableBufferPointer { body($0.baseAddress!) }
}

/// What waitpid's status word means.
enum ChildStatus {
    case exited(Int32)
    case signaled(Int32)

    init(_ status: Int32) {
        // WIFEXITED / WEXITSTATUS / WTERMSIG are macros Swift does not import.
        let signal = status & 0x7f
        if signal == 0 {
            self = .exited((status >> 8) & 0xff)
        } else {
            self = .signaled(signal)
        }
    }
}
