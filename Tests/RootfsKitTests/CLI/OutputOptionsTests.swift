import ArgumentParser
import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// The result lines of an output: each must match the one pattern and carry the file's real digest.
private func checkResultLines(_ text: String, _ comment: String) async throws -> [String: String] {
    var paths: [String: String] = [:]
    let lines = text.split(separator: "\n").map(String.init).filter { !$0.hasPrefix("rootfs: ") && !$0.hasPrefix("root hash: ") }
    #expect(!lines.isEmpty, "\(comment): no result line")
    // The result line every writing command prints: `KIND: /ABSOLUTE/PATH  SIZE  sha256:HEX`.
    let resultLine = #/([a-z0-9.+-]+): (/\S+)  ([0-9.]+ (?:B|KiB|MiB|GiB|TiB))  sha256:([0-9a-f]{64})/#
    for line in lines {
        let match = try #require(line.wholeMatch(of: resultLine), "\(comment): \(line)")
        let path = String(match.output.2)
        #expect(String(match.output.4) == (try await sha256sum(path)), "\(comment): \(line)")
        #expect(String(match.output.3) == formatBytes(FS.fileSize(path)), "\(comment): \(line)")
        paths[String(match.output.1)] = path
    }
    return paths
}

/// qemu-img's view of a disk's format (an independent reader).
private func qemuImgFormat(_ path: String) async throws -> String? {
    let info = try await ProcessRunner().capture(ToolCommand("qemu-img", ["info", "--output", "json", path]))
    return try jsonObject(info.standardOutput)["format"] as? String
}

@Suite(.requires(.busybox, .qemuImg), .tags(.busybox)) struct OutputOptionsTestsRequiringBusybox {
    /// Each output flag that cannot do what it says is refused before the hook runs, naming the flag.
    @Test func misleadingOutputsAreRefusedBeforeAnyWork() async throws {
        let dir = try Fixtures.temporaryDirectory("outopts"); defer { FS.remove(dir) }
        let marker = dir + "/hook-ran"
        let distros = try TestDistros.make(["bb": (TestDistros.busyboxConfig, TestDistros.busyboxLib.replacingOccurrences(
            of: "    for p in ${EXTRA_PKGS:-}", with: "    touch \"$MARKER\"\n    for p in ${EXTRA_PKGS:-}"))])
        defer { FS.remove(distros) }
        let out = dir + "/out"
        try FS.makeDirectories(out + "/sub")
        let cases: [(args: [String], names: [String])] = [
            (["-o", out], ["-o \(out) is a directory", "-O \(out)"]),             // the old `build -o DIR`
            (["-o", out + "/"], ["-o \(out)/", "-O \(out)"]),
            (["-o", out + "/guest"], ["-o \(out)/guest has no extension", "-O \(out)/guest"]),
            (["--format", "tar", "--format", "raw", "-o", out], ["-o \(out) names one output file", "-O \(out)"]),
            (["--format", "raw", "-o", out + "/x.qcow2"], ["-o \(out)/x.qcow2 ends in .qcow2", "--format says raw"]),
            (["-o", out + "/x.qcow"], ["-o \(out)/x.qcow: .qcow is not an extension", ".qcow2"]),
            (["-o", out + "/x.img", "-O", out], ["-o \(out)/x.img and -O \(out)"]),
            (["--image", out + "/x.qcow"], ["--image \(out)/x.qcow: .qcow", ".qcow2"]),
            (["--image", out + "/x.tar"], ["--image \(out)/x.tar is a tar name", "--format tar -o"]),
            (["--image", out + "/sub"], ["--image \(out)/sub is a directory"]),
            (["--initrd", out + "/new/"], ["--initrd \(out)/new/ ends in /"]),
            (["-O", dir + "/control", "--format", "tar"], []),                     // control: the hook runs
        ]
        for c in cases {
            FS.remove(marker)
            let r = try await Fixtures.rootfs(["build", "--distros-dir", distros, "bb", "--agent-init", "--no-manifest"] + c.args,
                                              environment: ["MARKER": marker, "TMPDIR": dir], workingDirectory: dir)
            if c.names.isEmpty {
                #expect(r.status == 0 && FS.exists(marker), "\(c.args): the control build did not run its hook: \(r.stderr)")
                continue
            }
            #expect(r.status != 0, "\(c.args): \(r.stderr)")
            #expect(!FS.exists(marker), "\(c.args): the hook ran before the output was refused")
            for name in c.names { #expect(r.stderr.contains(name), "\(c.args): \(r.stderr)") }
            #expect(r.stderr.contains("error:") && !r.stderr.contains("Error:"), "\(c.args): \(r.stderr)")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: out) == ["sub"], "a refused build wrote into \(out)")

        // image, initrd, extend and verity: the same names, refused before a byte is written.
        let tree = dir + "/control/bb.tar"
        try #require(FS.isRegularFile(tree))
        let single: [(args: [String], names: [String])] = [
            (["image", tree, "-o", out + "/x.qcow"], ["-o \(out)/x.qcow: .qcow is not an extension", ".qcow2", "--format"]),
            (["image", tree, "-o", out + "/x.qcow2", "--format", "raw"], ["ends in .qcow2", "--format says raw"]),
            (["image", tree, "-o", out + "/new/"], ["-o \(out)/new/ ends in /"]),
            (["image", tree, "-o", out + "/sub"], ["-o \(out)/sub is a directory"]),
            (["initrd", tree, "-o", out + "/"], ["-o \(out)/ is a directory"]),
            (["extend", tree, "--file", "/etc/x=" + tree, "-o", out + "/sub"], ["-o \(out)/sub is a directory"]),
            (["verity", tree, "-o", out + "/new/"], ["-o \(out)/new/ ends in /"]),
            (["image", tree, "-o", out + "/x.img", "--fs", "btrfs"], ["--fs"]),   // ArgumentParser's own error
            (["build"], ["name a distro"]),                                         // and a validate() error
        ]
        for c in single {
            let r = try await Fixtures.rootfs(c.args, environment: ["TMPDIR": dir], workingDirectory: dir)
            #expect(r.status != 0, "\(c.args): \(r.stderr)")
            for name in c.names { #expect(r.stderr.contains(name), "\(c.args): \(r.stderr)") }
            #expect(r.stderr.contains("error:") && !r.stderr.contains("Error:"), "\(c.args): \(r.stderr)")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: out) == ["sub"], "a refused command wrote into \(out)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: out + "/sub").isEmpty)
    }

    /// -o FILE, --image FILE and -O DIR write what they name; every result line has one form.
    @Test func outputsAreWhatTheirNamesSayAndResultLinesAgree() async throws {
        let distros = try busyboxDistros()
        let dir = try Fixtures.temporaryDirectory("outnames")
        defer { FS.remove(distros); FS.remove(dir) }
        // --image x.qcow2 is a qcow2; -O DIR holds the --format outputs and the manifest.
        try FS.makeDirectories(dir + "/a")
        let a = try await Fixtures.rootfs(["build", "bb", "--distros-dir", distros, "--agent-init", "--image", dir + "/a/bb.qcow2",
                                           "--initrd", dir + "/a/bb.initrd", "--format", "tar", "-O", dir + "/a"], workingDirectory: dir)
        try #require(a.status == 0, "\(a.stderr)")
        #expect(try await qemuImgFormat(dir + "/a/bb.qcow2") == "qcow2")
        let built = try await checkResultLines(a.stdout, "build")
        #expect(built == ["image": dir + "/a/bb.qcow2", "initrd": dir + "/a/bb.initrd", "tar": dir + "/a/bb.tar",
                          "manifest": dir + "/a/bb.manifest.json"], "\(a.stdout)")
        // -o FILE: the one output, its format from the extension, its manifest beside it.
        try FS.makeDirectories(dir + "/b")
        let b = try await Fixtures.rootfs(["build", "bb", "--distros-dir", distros, "--agent-init", "-o", "b/one.qcow2"],
                                          workingDirectory: dir)
        try #require(b.status == 0, "\(b.stderr)")
        #expect(try await qemuImgFormat(dir + "/b/one.qcow2") == "qcow2")
        #expect(try await checkResultLines(b.stdout, "build -o").keys.sorted() == ["manifest", "qcow2"], "\(b.stdout)")
        #expect(Set(try FileManager.default.contentsOfDirectory(atPath: dir + "/b")) == ["one.qcow2", "one.manifest.json"])
        // -O DIR without --format: the default outputs go there, not to build/<distro>.
        let c = try await Fixtures.rootfs(["build", "bb", "--distros-dir", distros, "--agent-init", "-O", "c", "--no-manifest"],
                                          workingDirectory: dir)
        try #require(c.status == 0, "\(c.stderr)")
        #expect(FS.isRegularFile(dir + "/c/bb.initrd") && FS.isRegularFile(dir + "/c/bb.img"), "\(c.stdout)")
        #expect(!FS.exists(dir + "/build/bb/bb.img"), "-O was ignored")

        // image, initrd and extend print the same line; extend says what it extended in words.
        let tar = dir + "/a/bb.tar"
        let image = try await Fixtures.rootfs(["image", tar, "-o", "x.vhdx"], workingDirectory: dir)
        #expect(image.status == 0, "\(image.stderr)")
        #expect(try await checkResultLines(image.stdout, "image") == ["vhdx": dir + "/x.vhdx"])
        #expect(try await qemuImgFormat(dir + "/x.vhdx") == "vhdx")
        let initrd = try await Fixtures.rootfs(["initrd", tar, "--output", "x.initrd"], workingDirectory: dir)
        #expect(initrd.status == 0, "\(initrd.stderr)")
        #expect(try await checkResultLines(initrd.stdout, "initrd") == ["initrd": dir + "/x.initrd"])
        let extend = try await Fixtures.rootfs(["extend", "x.initrd", "--file", "/etc/added=" + tar, "-o", "y.initrd"], workingDirectory: dir)
        #expect(extend.status == 0, "\(extend.stderr)")
        #expect(try await checkResultLines(extend.stdout, "extend") == ["initrd": dir + "/y.initrd"])
        #expect(extend.stderr.contains("extended a zstd initrd"), "\(extend.stderr)")
        #expect(!(extend.stdout + extend.stderr).contains("RootfsKit.") && !(extend.stdout + extend.stderr).contains("Compression"))
    }
}

/// Help texts list exactly the values that parse: read from the enums, compared with `--help`.
@Suite struct HelpTextTests {
    /// The help paragraph of `flag`: its line and the wrapped lines under it, white space collapsed.
    private func paragraph(_ help: String, flag: String) -> String? {
        let lines = help.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard let start = lines.firstIndex(where: {
            let t = $0.trimmingCharacters(in: .whitespaces)
            return t.hasPrefix(flag + " ") || t.contains(", " + flag + " ")
        }) else { return nil }
        var block = [lines[start]]
        for line in lines[(start + 1)...] {
            let t = line.trimmingCharacters(in: .whitespaces)
            if t.isEmpty || t.hasPrefix("-") { break }
            block.append(t)
        }
        return block.joined(separator: " ").split(separator: " ").joined(separator: " ")
    }

    @Test func valueListsAreTheEnumsCases() async throws {
        let cases: [(command: [String], flag: String, values: [String])] = [
            (["image"], "--partition-table", PartitionTable.allCases.map(\.rawValue)),
            (["image"], "--fs", FilesystemType.allCases.map(\.rawValue)),
            (["image"], "--erofs-compression", ErofsCompression.allCases.map(\.rawValue)),
            (["image"], "--ext4-writer", Ext4WriterKind.allCases.map(\.rawValue)),
            (["build"], "--partition-table", PartitionTable.allCases.map(\.rawValue)),
            (["build"], "--compression", Compression.allCases.map(\.rawValue)),
            (["build"], "--engine", EngineChoice.allCases.map(\.rawValue)),
            (["initrd"], "--compression", Compression.allCases.map(\.rawValue)),
            (["builder", "seed"], "--engine", ContainerEngine.Kind.allCases.map(\.rawValue)),
        ]
        for c in cases {
            let r = try await Fixtures.rootfs(c.command + ["--help"])
            #expect(r.status == 0)
            let text = try #require(paragraph(r.stdout, flag: c.flag), "\(c.command) \(c.flag):\n\(r.stdout)")
            let after = try #require(text.range(of: c.flag + " <"), "\(c.flag): \(text)").upperBound
            let named = text[after...].prefix { $0 != ">" }
            #expect(named.split(separator: "|").map(String.init) == c.values, "\(c.command) \(c.flag): \(text)")
            let listed = try #require(text.firstMatch(of: #/\(values: ([^;)]+)/#), "\(c.flag): \(text)")
            #expect(listed.output.1.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } == c.values, "\(text)")
        }
        // seed imports into an engine: the words for build's other engines are not offered.
        let seed = try await Fixtures.rootfs(["builder", "seed", "--help"])
        let engine = try #require(paragraph(seed.stdout, flag: "--engine"))
        #expect(!engine.contains("host") && !engine.contains("auto"), "\(engine)")
        let refused = try await Fixtures.rootfs(["builder", "seed", "debian", "--engine", "host"])
        #expect(refused.status != 0 && refused.stderr.contains("error:") && !refused.stderr.contains("Error:"), "\(refused.stderr)")
    }

    @Test func buildAndBootHelpHaveExamplesAndTheOutputFlags() async throws {
        let build = try await Fixtures.rootfs(["build", "--help"])
        #expect(build.stdout.contains("EXAMPLES:") && build.stdout.contains("rootfs build debian -o out/d.qcow2"), "\(build.stdout)")
        #expect(build.stdout.contains("-o, --output <FILE>") && build.stdout.contains("-O, --output-dir <DIR>"), "\(build.stdout)")
        for command in ["image", "initrd", "extend", "verity"] {
            let help = try await Fixtures.rootfs([command, "--help"])
            #expect(help.stdout.contains("-o, --output <"), "\(command): \(help.stdout)")
        }
        let boot = try await Fixtures.rootfs(["boot", "--help"])
        #expect(boot.stdout.contains("EXAMPLES:") && boot.stdout.contains("rootfs boot "), "\(boot.stdout)")
        #expect(!boot.stdout.contains("must be rootfs-agent"), "\(boot.stdout)")
    }
}
