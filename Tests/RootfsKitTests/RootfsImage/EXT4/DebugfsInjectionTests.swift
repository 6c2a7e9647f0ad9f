import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// libss's word splitting as debugfs applies it to one command-file line: words
/// split at blanks outside double quotes, `""` inside quotes is one quote. The
/// model the encoder is checked against (and the real debugfs below).
private func libssWords(_ line: [UInt8]) -> [[UInt8]] {
    var words: [[UInt8]] = []
    var current: [UInt8] = []
    var inWord = false, quoted = false
    var i = 0
    while i < line.count {
        let b = line[i]
        if quoted {
            if b == 34 {
                if i + 1 < line.count && line[i + 1] == 34 { current.append(34); i += 2; continue }
                quoted = false
            } else { current.append(b) }
        } else if b == 32 || b == 9 {
            if inWord { words.append(current); current = []; inWord = false }
        } else if b == 34 {
            quoted = true; inWord = true
        } else {
            current.append(b); inWord = true
        }
        i += 1
    }
    if inWord { words.append(current) }
    return words
}

/// A debugfs command file is text that debugfs runs: `!` at the start of a line
/// goes to system(). No byte of a guest name may end a line or start one.
@Suite struct DebugfsInjectionTests {
    @Test func everyByteOfAGuestWordStaysInsideItsWord() throws {
        for b in UInt8(0)...UInt8(255) {
            for word: [UInt8] in [[b], [b, 33, 116, 111, 117, 99, 104], [33, b, 34, b], Array("x".utf8) + [b] + Array("!touch /tmp/x".utf8)] {
                let command = DebugfsCommand("symlink").literal("x")
                if b == 0 || b == 10 || b == 13 {
                    #expect(throws: RootfsError.self) { try command.quoted(word, what: "w") }
                    continue
                }
                let line = try command.quoted(word, what: "w").line(what: "w")
                // Exactly one line: the only LF is the last byte, and there is no CR or NUL.
                #expect(line.last == 10)
                #expect(!line.dropLast().contains(10) && !line.contains(13) && !line.contains(0), "byte \(b)")
                // It starts with our command, and the guest word comes back as exactly one word.
                #expect(libssWords(Array(line.dropLast())) == [Array("symlink".utf8), [120], word], "byte \(b)")
            }
        }
    }

    @Test func aLineFgetsWouldSplitIsRefused() throws {
        let long = [UInt8](repeating: 97, count: DebugfsCommand.maximumLineLength) + Array("!touch /tmp/x".utf8)
        #expect(throws: RootfsError.self) { try DebugfsCommand("rm").quoted(long, what: "w").line(what: "w") }
        #expect(throws: RootfsError.self) { try Ext4Fixup.quote([47, 120, 13, 33]) }
    }

    /// The real debugfs, fed a script with every byte in names and link targets:
    /// nothing runs, and every name and target is stored byte for byte.
    @Test func realDebugfsStoresEveryByteAndRunsNothing() async throws {
        let dir = try Fixtures.temporaryDirectory("debugfs-bytes"); defer { FS.remove(dir) }
        let canary = dir + "/canary"
        let image = dir + "/fs.img"
        try await ProcessRunner().capture(ToolCommand("mke2fs", ["-q", "-t", "ext4", "-F", image, "8M"]))
        var script: [UInt8] = []
        var expected: [[UInt8]: [UInt8]] = [:]
        for b in UInt8(1)...UInt8(255) where b != 10 && b != 13 && b != 47 {
            let name: [UInt8] = Array("l".utf8) + [b] + Array(" !touch canary".utf8)
            let target: [UInt8] = [b] + Array("!touch \(canary) \"q\"".utf8) + [b]
            expected[name] = target
            let what = "test link"
            script += try DebugfsCommand("symlink").quoted([47] + name, what: what).quoted(target, what: what).line(what: what)
        }
        FileManager.default.createFile(atPath: dir + "/cmds", contents: Data(script))
        let out = try await ProcessRunner().capture(ToolCommand("debugfs", ["-w", "-f", dir + "/cmds", image], workingDirectory: dir))
        #expect(!FS.exists(canary), "debugfs ran a command: \(out.standardError)")
        let fsck = try await ProcessRunner().capture(ToolCommand("e2fsck", ["-fn", image]))
        #expect(fsck.standardOutput.contains("\(expected.count + 11)/"), "\(fsck.standardOutput)")
        // Read every link back through debugfs' rdump and compare bytes.
        try FS.makeDirectories(dir + "/out")
        try await ProcessRunner().capture(ToolCommand("debugfs", ["-R", "rdump / \(dir)/out", image]))
        var found = 0
        try TreeWalker(root: dir + "/out").walk { entry in
            guard entry.fileType == S_IFLNK else { return }
            #expect(expected[entry.path] == entry.linkTarget, "\(debugName(entry.path))")
            found += 1
        }
        #expect(found == expected.count)
    }

    /// The attack from the issue, through the real CLI: a link target with a newline
    /// (and with CR LF) followed by `!touch`, and a tar member named `etc/x\r\n!touch`.
    @Test func extendOnExt4RunsNoHostCommandFromAnOverlay() async throws {
        let dir = try Fixtures.temporaryDirectory("extend-inject"); defer { FS.remove(dir) }
        try FS.makeDirectories(dir + "/tree/sbin")
        try FS.makeDirectories(dir + "/tree/etc")
        try FS.makeDirectories(dir + "/tree/usr/bin")
        for exe in ["/tree/sbin/init", "/tree/usr/bin/rootfs-agent"] {
            try "#!/bin/sh\n".write(toFile: dir + exe, atomically: false, encoding: .utf8)
            chmod(dir + exe, 0o755)
        }
        let made = try await Fixtures.rootfs(["image", dir + "/tree", "-o", dir + "/base.img"])
        #expect(made.status == 0, "\(made.stderr)")
        let before = try Data(contentsOf: URL(fileURLWithPath: dir + "/base.img"))

        var overlays: [String] = []
        for (i, separator) in ["\n", "\r\n", "\r"].enumerated() {
            let ov = dir + "/ov\(i)"
            try FS.makeDirectories(ov + "/etc")
            symlink("x\(separator)!touch \(dir)/canary-link\(i)", ov + "/etc/evil")
            overlays.append(ov)
            let named = dir + "/named\(i)"
            try FS.makeDirectories(named + "/etc")
            try "x".write(toFile: named + "/etc/x\(separator)!touch canary-name\(i)", atomically: false, encoding: .utf8)
            overlays.append(named)
        }
        // A tar whose member name holds CR LF and a command (GNU tar keeps it as given).
        try FS.makeDirectories(dir + "/stage")
        try "x".write(toFile: dir + "/stage/f", atomically: false, encoding: .utf8)
        try await ProcessRunner().capture(ToolCommand("tar", ["-C", dir + "/stage", "-cf", dir + "/evil.tar",
                                                              "--transform", "s,^f$,etc/x\r\n!touch \(dir)/canary-tar,", "f"]))
        overlays.append(dir + "/evil.tar")

        for overlay in overlays {
            // The working directory is `dir`, so a relative `touch canary-…` would land there too.
            let r = try await Fixtures.rootfs(["extend", dir + "/base.img", "--overlay", overlay, "-o", dir + "/out.img"], workingDirectory: dir)
            // Root or not, the image is written again by the native writer: no debugfs, every byte of a name kept.
            #expect(r.status == 0, "\(overlay): \(r.stderr)")
            let names = try TreeDiff.entries(.ext4(path: dir + "/out.img", offset: 1 << 20)).keys.map { String(decoding: $0, as: UTF8.self) }
            #expect(names.contains { $0.hasPrefix("etc/") && ($0.contains("\n") || $0.contains("\r")) || $0 == "etc/evil" }, "\(names)")
            unlink(dir + "/out.img")
            #expect(!FS.exists(dir + "/out.img"))
        }
        let left = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("canary") }
        #expect(left.isEmpty, "host commands ran: \(left)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir + "/base.img")) == before)

        // Link targets with blanks, quotes and `!` are kept exactly, no longer dropped.
        let ok = dir + "/ok"
        try FS.makeDirectories(ok + "/etc")
        symlink("a target \"with\" blanks !and bangs", ok + "/etc/odd")
        let r = try await Fixtures.rootfs(["extend", dir + "/base.img", "--overlay", ok, "-o", dir + "/ok.img"])
        #expect(r.status == 0, "\(r.stderr)")
        let stat = try await ProcessRunner().capture(ToolCommand("debugfs", ["-R", "stat /etc/odd", dir + "/ok.img?offset=1048576"]))
        #expect(stat.standardOutput.contains("Fast link dest: \"a target \"with\" blanks !and bangs\""), "\(stat.standardOutput)")
    }
}
