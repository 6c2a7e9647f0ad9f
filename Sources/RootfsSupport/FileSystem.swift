import Foundation

/// Small file-system helpers on host paths. Paths inside a guest tree go
/// through `GuestTree` instead.
public enum FS {
    public static func exists(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }

    public static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    public static func isRegularFile(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
    }

    /// A directory that does not exist or holds nothing.
    public static func isMissingOrEmptyDirectory(_ path: String) -> Bool {
        guard exists(path) else { return true }
        guard let items = try? FileManager.default.contentsOfDirectory(atPath: path) else { return false }
        return items.isEmpty
    }

    public static func parent(_ path: String) -> String {
        let url = URL(fileURLWithPath: path)
        return url.deletingLastPathComponent().path
    }

    public static func basename(_ path: String) -> String {
        URL(fileURLWithPath: path).lastPathComponent
    }

    public static func absolute(_ path: String) -> String {
        if path.hasPrefix("/") { return URL(fileURLWithPath: path).standardizedFileURL.path }
        return URL(fileURLWithPath: FileManager.default.currentDirectoryPath)
            .appendingPathComponent(path).standardizedFileURL.path
    }

    public static func realpath(_ path: String) -> String? {
        guard let r = Foundation.realpath(path, nil) else { return nil }
        defer { free(r) }
        return String(cString: r)
    }

    /// The directory holding the running executable.
    public static func executableDirectory() -> String? {
        guard let exe = realpath("/proc/self/exe") ?? CommandLine.arguments.first.flatMap(realpath) else { return nil }
        return parent(exe)
    }

    public static func makeDirectories(_ path: String) throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    /// A fresh, uniquely named directory next to `target`, so that a final
    /// rename stays on one file system.
    public static func makeSiblingTemporaryDirectory(for target: String) throws -> String {
        let dir = parent(target)
        try makeDirectories(dir)
        var template = Array("\(dir)/.\(basename(target)).tmp-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else {
            throw RootfsError("cannot create a temporary directory in \(dir): \(String(cString: strerror(errno)))")
        }
        return String(cString: made)
    }

    /// A unique temporary file name next to `target` (the file is not created).
    public static func siblingTemporaryPath(for target: String) -> String {
        "\(parent(target))/.\(basename(target)).tmp-\(getpid())-\(UInt32.random(in: 0 ... .max))"
    }

    /// Removes a file or a whole tree without following symbolic links. A symlink
    /// (even one to a directory) is removed itself: nothing is resolved through it,
    /// so the mounts below its target are never touched.
    public static func remove(_ path: String) {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        guard (st.st_mode & S_IFMT) == S_IFDIR else { unlink(path); return }
        // Never delete through a mount left inside a tree (a bootstrap killed while
        // /proc or /dev was mounted in its chroot): detach those first, deepest first.
        guard let real = realDirectoryPath(path) else {
            FileHandle.standardError.write(Data("warning: not removing \(path): it is no longer a directory of its own\n".utf8))
            return
        }
        guard let mounts = mountPointsIfReadable(underReal: real) else {
            FileHandle.standardError.write(Data("warning: not removing \(path): /proc/self/mountinfo cannot be read, so mounts inside it cannot be ruled out\n".utf8))
            return
        }
        if !mounts.isEmpty {
            detach(mounts)
            guard mountPoints(underReal: real).isEmpty else {
                FileHandle.standardError.write(Data("warning: not removing \(path): file systems are still mounted inside it\n".utf8))
                return
            }
        }
        // Directories left read-only by a package manager would stop removeItem.
        _ = try? FileManager.default.removeItem(atPath: path)
        if exists(path) {
            _ = try? ProcessRunnerSync.run(["chmod", "-R", "u+rwX", path])
            _ = try? FileManager.default.removeItem(atPath: path)
        }
        // A process that was just stopped (a package manager in a container being
        // torn down) may still be creating files: try again for a few seconds.
        var attempts = 0
        while exists(path) && attempts < 20 {
            attempts += 1
            usleep(250_000)
            _ = try? ProcessRunnerSync.run(["rm", "-rf", "--one-file-system", path])
        }
    }

    /// The kernel's own path of the directory `path` names, as bytes: opened with
    /// O_NOFOLLOW (a symlink in last place is not a directory of its own) and read
    /// back from /proc/self/fd, so no path string is resolved a second time.
    public static func realDirectoryPath(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/fd/\(fd)", &buffer, buffer.count)
        guard n > 0, n < buffer.count else { return nil }
        return Array(buffer[..<n])
    }

    /// Mount points strictly below the directory `path` (never resolved through a
    /// symlink in last place), in mount order; for messages.
    public static func mountPoints(under path: String) -> [String] {
        guard let real = realDirectoryPath(path) else { return [] }
        return mountPoints(underReal: real).map { String(decoding: $0, as: UTF8.self) }
    }

    /// Mount points strictly below `real` (a kernel path, bytes), in mount order, read
    /// from /proc/self/mountinfo as bytes: a name that is not UTF-8 is compared exactly.
    public static func mountPoints(underReal real: [UInt8]) -> [[UInt8]] {
        mountPointsIfReadable(underReal: real) ?? []
    }

    /// nil when /proc/self/mountinfo cannot be read: `remove` then deletes nothing.
    static func mountPointsIfReadable(underReal real: [UInt8]) -> [[UInt8]]? {
        // Not FileManager.contents(atPath:): it trusts st_size, which is 0 here, and
        // returned the first 4 KiB only, so a mount further down went unseen and
        // `remove` deleted through it (seen with Docker's mounts on the host).
        guard let data = try? OwnedFileDescriptor(path: "/proc/self/mountinfo", flags: O_RDONLY)
            .readToEnd(limit: 64 << 20) else { return [] }
        let prefix = real == [UInt8(ascii: "/")] ? real : real + [UInt8(ascii: "/")]
        return data.split(separator: UInt8(ascii: "\n")).compactMap { line -> [UInt8]? in
            let fields = line.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
            guard fields.count > 4 else { return nil }
            let point = unescapeMountField(Array(fields[4]))
            return point.count > prefix.count && point.starts(with: prefix) ? point : nil
        }
    }

    /// Detaches the given mount points, deepest (last mounted) first. umount2 with
    /// UMOUNT_NOFOLLOW: the kernel's path from mountinfo, never a link in last place.
    public static func detach(_ mounts: [[UInt8]]) {
        for mount in mounts.reversed() {
            _ = (mount + [0]).withUnsafeBufferPointer { name in
                name.baseAddress!.withMemoryRebound(to: CChar.self, capacity: name.count) {
                    umount2($0, Int32(MNT_DETACH) | Int32(UMOUNT_NOFOLLOW))
                }
            }
        }
    }

    /// mountinfo writes space, tab, newline and backslash as \ooo octal escapes.
    static func unescapeMountField(_ field: [UInt8]) -> [UInt8] {
        var bytes: [UInt8] = []
        var chars = field[...]
        while let c = chars.popFirst() {
            if c == UInt8(ascii: "\\"), chars.count >= 3,
               let value = UInt8(String(decoding: chars.prefix(3), as: UTF8.self), radix: 8) {
                bytes.append(value)
                chars = chars.dropFirst(3)
            } else {
                bytes.append(c)
            }
        }
        return bytes
    }

    /// Writes all of `chunk` to `fd` (retrying short writes and EINTR); `name` is for the error.
    public static func writeAll(_ chunk: UnsafeRawBufferPointer, to fd: Int32, name: String) throws {
        // Borrowed: the one write loop is OwnedFileDescriptor's; the caller keeps the descriptor.
        var borrowed = OwnedFileDescriptor(taking: fd, name: name)
        defer { _ = borrowed.release() }
        try borrowed.writeAll(chunk)
    }

    /// Moves `source` to `destination` atomically (same file system). An existing
    /// destination must be of the source's kind: rename(2) would otherwise replace
    /// /dev/null, a FIFO, a socket, a device or a symlink with our file.
    public static func rename(_ source: String, to destination: String) throws {
        var from = stat()
        let isDirectory = lstat(source, &from) == 0 && (from.st_mode & S_IFMT) == S_IFDIR
        try requireReplaceableOutput(destination, option: "output", directory: isDirectory)
        if Foundation.rename(source, destination) != 0 {
            throw RootfsError("cannot move \(source) to \(destination): \(String(cString: strerror(errno)))")
        }
    }

    /// Replaces `destination` (a directory that may exist) by `source`, so that
    /// at every moment one complete tree is in place.
    public static func replaceDirectory(_ destination: String, with source: String) throws {
        // A symlink there would be moved aside and its target's mounts walked by `remove`.
        try requireReplaceableOutput(destination, option: "output", directory: true)
        if exists(destination) {
            let old = siblingTemporaryPath(for: destination) + ".old"
            try rename(destination, to: old)
            do { try rename(source, to: destination) } catch {
                try? rename(old, to: destination)
                throw error
            }
            remove(old)
        } else {
            try rename(source, to: destination)
        }
    }

    /// The error text for the last failed system call.
    public static func errnoText(_ code: Int32 = errno) -> String { String(cString: strerror(code)) }

    /// Refuses an existing output that is not a regular file (or, for a directory
    /// output, a directory): never lstat-follows, so a symlink is refused too. Called
    /// for every flag up front, before any work, and again by `rename` at the end.
    public static func requireReplaceableOutput(_ output: String, option: String, directory: Bool = false) throws {
        var st = stat()
        guard lstat(output, &st) == 0 else { return }
        let kind = st.st_mode & S_IFMT
        if kind == (directory ? S_IFDIR : S_IFREG) { return }
        let what: String
        switch kind {
        case S_IFLNK: what = "a symbolic link"
        case S_IFCHR: what = "a character device"
        case S_IFBLK: what = "a block device"
        case S_IFIFO: what = "a FIFO"
        case S_IFSOCK: what = "a socket"
        case S_IFDIR: what = "a directory"
        default: what = "a regular file"
        }
        throw RootfsError("\(option) \(output) exists and is \(what), not \(directory ? "a directory" : "a regular file"): rootfs does not replace it",
                          hint: "remove it first or choose another path (outputs replace only earlier outputs of their own kind)")
    }

    /// Checks that the directory that will receive `output` exists.
    public static func requireParentDirectory(of output: String, option: String) throws {
        let dir = parent(absolute(output))
        guard isDirectory(dir) else {
            throw RootfsError("the directory for \(option) \(output) does not exist: \(dir)",
                              hint: "create it first (mkdir -p \(shellQuote(dir))) or choose another path")
        }
    }
}

extension Array where Element == UInt8 {
    /// The bytes as a NUL-terminated C string, for system calls on paths that need not be UTF-8.
    public func withCString<R>(_ body: (UnsafePointer<CChar>) throws -> R) rethrows -> R {
        try (self + [0]).withUnsafeBufferPointer { buffer in
            try buffer.withMemoryRebound(to: CChar.self) { try body($0.baseAddress!) }
        }
    }
}

/// A synchronous helper for the rare clean-up command run outside async code.
enum ProcessRunnerSync {
    static func run(_ argv: [String]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = argv
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
    }
}
