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

    /// Removes a file or a whole tree without following symbolic links.
    public static func remove(_ path: String) {
        guard exists(path) else { return }
        // Never delete through a mount left inside a tree (a bootstrap killed while
        // /proc or /dev was mounted in its chroot): detach those first, deepest first.
        let mounts = mountPoints(under: path)
        if !mounts.isEmpty {
            for mount in mounts.reversed() { _ = try? ProcessRunnerSync.run(["umount", "--lazy", mount]) }
            guard mountPoints(under: path).isEmpty else {
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

    /// Mount points strictly below `path`, in mount order (from /proc/self/mountinfo).
    static func mountPoints(under path: String) -> [String] {
        guard let info = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return [] }
        let prefix = (realpath(path) ?? path) + "/"
        return info.split(separator: "\n").compactMap { line -> String? in
            let fields = line.split(separator: " ")
            guard fields.count > 4 else { return nil }
            let point = unescapeMountField(String(fields[4]))
            return point.hasPrefix(prefix) ? point : nil
        }
    }

    /// mountinfo writes space, tab, newline and backslash as \ooo octal escapes.
    static func unescapeMountField(_ field: String) -> String {
        var bytes: [UInt8] = []
        var chars = Array(field.utf8)[...]
        while let c = chars.popFirst() {
            if c == UInt8(ascii: "\\"), chars.count >= 3,
               let value = UInt8(String(decoding: chars.prefix(3), as: UTF8.self), radix: 8) {
                bytes.append(value)
                chars = chars.dropFirst(3)
            } else {
                bytes.append(c)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Writes all of `chunk` to `fd` (retrying short writes and EINTR); `name` is for the error.
    public static func writeAll(_ chunk: UnsafeRawBufferPointer, to fd: Int32, name: String) throws {
        // Borrowed: the one write loop is OwnedFileDescriptor's; the caller keeps the descriptor.
        var borrowed = OwnedFileDescriptor(taking: fd, name: name)
        defer { _ = borrowed.release() }
        try borrowed.writeAll(chunk)
    }

    /// Moves `source` to `destination` atomically (same file system).
    public static func rename(_ source: String, to destination: String) throws {
        if Foundation.rename(source, destination) != 0 {
            throw RootfsError("cannot move \(source) to \(destination): \(String(cString: strerror(errno)))")
        }
    }

    /// Replaces `destination` (a directory that may exist) by `source`, so that
    /// at every moment one complete tree is in place.
    public static func replaceDirectory(_ destination: String, with source: String) throws {
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

    /// Checks that the directory that will receive `output` exists.
    public static func requireParentDirectory(of output: String, option: String) throws {
        let dir = parent(absolute(output))
        guard isDirectory(dir) else {
            throw RootfsError("the directory for \(option) \(output) does not exist: \(dir)",
                              hint: "create it first (mkdir -p \(shellQuote(dir))) or choose another path")
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
