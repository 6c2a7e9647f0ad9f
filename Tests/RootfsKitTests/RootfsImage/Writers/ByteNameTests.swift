import Foundation
import Testing
@testable import RootfsImage
@testable import RootfsSupport

/// Creates a file named by raw bytes (not UTF-8) below `directory`.
private func makeFile(_ directory: String, _ name: [UInt8], _ text: String) throws {
    let fd = (Array(directory.utf8) + [UInt8(ascii: "/")] + name).withCString { open($0, O_WRONLY | O_CREAT | O_EXCL, 0o644) }
    guard fd >= 0 else { throw RootfsError("cannot create a test file: \(FS.errnoText())") }
    defer { close(fd) }
    try Array(text.utf8).withUnsafeBytes { try FS.writeAll($0, to: fd, name: "test") }
}

/// The names of a directory, as bytes.
private func names(_ directory: String) throws -> Set<[UInt8]> {
    guard let dir = opendir(directory) else { throw RootfsError("cannot list \(directory)") }
    defer { closedir(dir) }
    var found = Set<[UInt8]>()
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: &entry.pointee.d_name) { Array($0.prefix { $0 != 0 }) }
        if name != [46] && name != [46, 46] { found.insert(name) }
    }
    return found
}

/// Member names of a tar, as hex of their bytes (Python's tarfile, surrogateescape: a second reader).
private func tarNames(_ tar: String) async throws -> Set<String> {
    let script = "import tarfile,sys\nfor m in tarfile.open(sys.argv[1], encoding='utf-8', errors='surrogateescape'): print(m.name.encode('utf-8','surrogateescape').hex())"
    let r = try await Fixtures.run("/usr/bin/python3", ["-c", script, tar])
    return Set(r.stdout.split(separator: "\n").map(String.init))
}

private func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

/// Names that are not UTF-8 (two that would both become U+FFFD U+FFFD) go through the
/// extractor, overlays, `--file DIR`, `--format rootfs` and extend as bytes: none is
/// mangled, none lost, none collides with another.
@Suite struct ByteNameTests {
    static let first: [UInt8] = [0xFF, 0xFE]
    static let second: [UInt8] = [0xFE, 0xFF]
    static let latin1: [UInt8] = Array("caf".utf8) + [0xE9]

    @Test func namesThatAreNotUTF8RoundTripAsBytes() async throws {
        let dir = try Fixtures.temporaryDirectory("bytenames"); defer { FS.remove(dir) }
        let tree = dir + "/tree", overlay = dir + "/overlay", files = dir + "/files"
        for d in [tree + "/etc", overlay + "/etc", files] { try FS.makeDirectories(d) }
        try makeFile(tree + "/etc", Self.first, "tree first\n")
        try makeFile(tree + "/etc", Self.second, "tree second\n")
        try makeFile(overlay + "/etc", Self.latin1, "overlay\n")
        try makeFile(overlay + "/etc", Self.first + [0x31], "overlay first\n")
        try makeFile(files, Self.second + [0x32], "file second\n")
        let tar = dir + "/tree.tar"
        _ = try await Fixtures.run("/bin/tar", ["-C", tree, "-cf", tar, "."])
        let expected: Set<[UInt8]> = [Self.first, Self.second, Self.latin1, Self.first + [0x31]]
        let expectedTar = Set((expected.map { Array("etc/".utf8) + $0 } + [Array("opt/d/".utf8) + Self.second + [0x32]]).map(hex))
        let compose = ["--overlay", overlay, "--file", "/opt/d=" + files]

        // `rootfs image` from a tar (extracted, overlays applied) into a tar and into a directory.
        let out = dir + "/out.tar"
        let image = try await Fixtures.rootfs(["image", tar, "-o", out, "--format", "tar"] + compose)
        #expect(image.status == 0, "\(image.stderr)")
        let imageNames = try await tarNames(out)
        #expect(imageNames.isSuperset(of: expectedTar), "\(imageNames)")
        let rootfsDir = dir + "/rootfs"
        let directory = try await Fixtures.rootfs(["image", tar, "-o", rootfsDir, "--format", "rootfs"] + compose)
        #expect(directory.status == 0, "\(directory.stderr)")
        #expect(try names(rootfsDir + "/etc") == expected)
        #expect(try names(rootfsDir + "/opt/d") == [Self.second + [0x32]])
        // Each name holds its own content (two names never collapse into one).
        for (name, text) in [(Self.first, "tree first\n"), (Self.second, "tree second\n"), (Self.first + [0x31], "overlay first\n")] {
            let fd = (Array((rootfsDir + "/etc/").utf8) + name).withCString { open($0, O_RDONLY) }
            #expect(fd >= 0)
            var buffer = [UInt8](repeating: 0, count: 64)
            let n = read(fd, &buffer, 64); close(fd)
            #expect(n > 0 && String(decoding: buffer.prefix(n), as: UTF8.self) == text, "\(hex(name))")
        }
        #expect(!FS.exists(rootfsDir + "/etc/\u{FFFD}\u{FFFD}"))

        // `rootfs extend` of the tar.
        let extended = dir + "/extended.tar"
        let extend = try await Fixtures.rootfs(["extend", tar, "-o", extended] + compose)
        #expect(extend.status == 0, "\(extend.stderr)")
        let extendedNames = try await tarNames(extended)
        #expect(extendedNames.isSuperset(of: expectedTar), "\(extendedNames)")
        #expect(!extendedNames.contains(hex(Array("etc/\u{FFFD}\u{FFFD}".utf8))))
    }
}

/// Paths longer than PATH_MAX (4096 bytes) in an archive are extracted (every name is
/// made relative to its parent's descriptor), and a FIFO swapped in for a walked file
/// never blocks the reader.
@Suite struct LongPathAndSwapTests {
    @Test func pathsBeyondPathMaxAreExtracted() async throws {
        let dir = try Fixtures.temporaryDirectory("longpath"); defer { FS.remove(dir) }
        // 30 directories of 150 bytes: a 4.5 KB path.
        let script = """
        import tarfile, io, sys
        with tarfile.open(sys.argv[1], 'w', format=tarfile.PAX_FORMAT) as t:
            path = ''
            for i in range(30):
                path = (path + '/' if path else '') + ('d%02d' % i) * 50
                d = tarfile.TarInfo(path); d.type = tarfile.DIRTYPE; d.mode = 0o755; t.addfile(d)
            f = tarfile.TarInfo(path + '/deep'); data = b'deep data\\n'; f.size = len(data); t.addfile(f, io.BytesIO(data))
        """
        _ = try await Fixtures.run("/usr/bin/python3", ["-c", script, dir + "/long.tar"])
        let result = try await Fixtures.rootfs(["image", dir + "/long.tar", "-o", dir + "/tree", "--format", "rootfs"])
        #expect(result.status == 0, "\(result.stderr)")
        // Read back name by name (a second reader: Python with dir_fd).
        let check = """
        import os, sys
        fd = os.open(sys.argv[1], os.O_RDONLY)
        for i in range(30):
            nfd = os.open(('d%02d' % i) * 50, os.O_RDONLY, dir_fd=fd); os.close(fd); fd = nfd
        f = os.open('deep', os.O_RDONLY, dir_fd=fd); sys.stdout.write(os.read(f, 100).decode())
        """
        let read = try await Fixtures.run("/usr/bin/python3", ["-c", check, dir + "/tree"])
        #expect(read.stdout == "deep data\n", "\(read.stderr)")
    }

    @Test func aFIFOSwappedInForAWalkedFileDoesNotBlockTheReader() throws {
        let dir = try Fixtures.temporaryDirectory("fifoswap"); defer { FS.remove(dir) }
        try "plain\n".write(toFile: dir + "/file", atomically: false, encoding: .utf8)
        var outcome: String?
        let start = Date()
        try TreeWalker(root: dir).walk { entry in
            guard entry.path == Array("file".utf8) else { return }
            // The race: between the walker's fstatat and its open, the file becomes a FIFO.
            unlink(dir + "/file")
            #expect(mkfifo(dir + "/file", 0o644) == 0)
            do { close(try entry.openContent()); outcome = "opened" } catch { outcome = "\(error)" }
        }
        #expect(outcome?.contains("changed while it was read") == true, "\(outcome ?? "nil")")
        #expect(Date().timeIntervalSince(start) < 5)
    }

    /// `--file GUEST=HOST` with a guest path that is not UTF-8, given as raw argv bytes (a
    /// shell's printf makes them: Swift's Process passes only valid UTF-8). Two guest paths
    /// that differ only in one invalid byte (both U+FFFD in CommandLine.arguments) arrive
    /// as two members, each byte-exact and with its own content; both argv forms.
    @Test func aFileGuestPathThatIsNotUTF8ArrivesByteExact() async throws {
        let dir = try Fixtures.temporaryDirectory("bytefile"); defer { FS.remove(dir) }
        for d in ["/tree/etc", "/tree/sbin", "/tree/usr/bin"] { try FS.makeDirectories(dir + d) }
        for exe in ["/tree/sbin/init", "/tree/usr/bin/rootfs-agent"] {
            try "#!/bin/sh\n".write(toFile: dir + exe, atomically: false, encoding: .utf8)
            chmod(dir + exe, 0o755)
        }
        try "one\n".write(toFile: dir + "/one", atomically: false, encoding: .utf8)
        try "two\n".write(toFile: dir + "/two", atomically: false, encoding: .utf8)
        let out = dir + "/out.tar"
        let script = #"exec "$0" image "$1/tree" -o "$1/out.tar" --format tar --file "$(printf '/etc/caf\351')=$1/one" "--file=$(printf '/etc/caf\352')=$1/two""#
        let r = try await Fixtures.run("/bin/sh", ["-c", script, Fixtures.rootfsBinary, dir])
        #expect(r.status == 0, "\(r.stderr)")
        let members = try await tarNames(out)
        let first = Array("etc/caf".utf8) + [0xE9], second = Array("etc/caf".utf8) + [0xEA]
        #expect(members.contains(hex(first)) && members.contains(hex(second)), "\(members)")
        #expect(!members.contains(hex(Array("etc/caf\u{FFFD}".utf8))))
        // Each member holds its own file (GNU tar extracts by the exact bytes).
        for (name, text) in [(first, "one\n"), (second, "two\n")] {
            let shown = try await Fixtures.run("/bin/sh", ["-c", #"tar -xOf "$0" "$(printf "$1")""#, out,
                                                           name.map { $0 < 0x80 ? String(UnicodeScalar($0)) : String(format: "\\%03o", $0) }.joined()])
            #expect(shown.stdout == text, "\(hex(name)): \(shown.stderr)")
        }
    }

    /// A tar holding two names that differ only in bytes that are not UTF-8 (`ff fe` and
    /// `fe ff`, both U+FFFD U+FFFD as Strings): `size --json` counts both files and both
    /// sizes, `ls` prints both with `\xNN`, `diff` names the one that differs exactly.
    @Test func sizeLsAndDiffKeepTwoNamesThatDifferOnlyInInvalidBytes() async throws {
        let dir = try Fixtures.temporaryDirectory("bytelist"); defer { FS.remove(dir) }
        try FS.makeDirectories(dir + "/a/etc")
        try makeFile(dir + "/a/etc", ByteNameTests.first, "a\n")
        try makeFile(dir + "/a/etc", ByteNameTests.second, "bbbb\n")
        _ = try await Fixtures.run("/bin/tar", ["-C", dir + "/a", "-cf", dir + "/a.tar", "."])
        try FS.makeDirectories(dir + "/b/etc")
        try makeFile(dir + "/b/etc", ByteNameTests.first, "a\n")
        _ = try await Fixtures.run("/bin/tar", ["-C", dir + "/b", "-cf", dir + "/b.tar", "."])

        let size = try await Fixtures.rootfs(["size", dir + "/a.tar", "--json"])
        #expect(size.status == 0, "\(size.stderr)")
        let report = try JSONSerialization.jsonObject(with: Data(size.stdout.utf8)) as? [String: Any]
        #expect(report?["files"] as? Int == 2, "\(size.stdout)")
        #expect(report?["totalBytes"] as? Int == 7, "\(size.stdout)")

        let ls = try await Fixtures.rootfs(["ls", dir + "/a.tar", "/etc"])
        #expect(ls.status == 0, "\(ls.stderr)")
        #expect(ls.stdout.contains("\\xff\\xfe") && ls.stdout.contains("\\xfe\\xff"), "\(ls.stdout)")

        let diff = try await Fixtures.rootfs(["diff", dir + "/a.tar", dir + "/b.tar", "--ignore-mtime"])
        #expect(diff.status == 1, "\(diff.stderr)")
        let lines = diff.stdout.split(separator: "\n").map(String.init).filter { $0.hasPrefix("only in") || $0.hasPrefix("changed") }
        #expect(lines == ["only in A: /etc/\\xfe\\xff (file)"], "\(diff.stdout)")
    }
}
