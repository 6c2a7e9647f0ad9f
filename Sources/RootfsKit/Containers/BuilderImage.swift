import Foundation

/// The builder image of a distro: its `Dockerfile.in` rendered, and a tag that
/// names the distro, the version and a hash of everything the image is made from,
/// so that it is built once and rebuilt only when an input changes.
public struct BuilderImage: Sendable, Equatable {
    /// The rendered Dockerfile.
    public var dockerfile: String
    /// The FROM image after --builder-base / BUILDER_BASE / IMAGE_REGISTRY.
    public var baseImage: String?
    /// The build context (the distro directory: a Dockerfile may COPY files from it).
    public var context: String
    public var templatePath: String
    /// SHA-256 of the rendered Dockerfile, the context files and the base image ID.
    public var inputsHash: String
    public var tag: String
    /// Kata's build arguments the Dockerfile declares (`ARG IMAGE_REGISTRY`, `ARG GO_VERSION`,
    /// `ARG RUST_TOOLCHAIN`), with the caller's values; the proxies are added by the build.
    public var buildArguments: [String: String] = [:]
    /// The platform the image is built for (linux/arm64), nil for the host's own.
    public var platform: String?

    /// The label that records `inputsHash` on the image.
    public static let inputsLabel = "org.rootfs.builder.inputs"

    /// Files of the distro directory that are not build inputs: mounted at run time or rendered.
    static let nonInputs: Set<String> = ["config.sh", "rootfs_lib.sh", "Dockerfile.in"]

    /// Fills in the placeholders `@NAME@` (upper case, digits, `_`) from `values`;
    /// an unknown one is an error naming the template. Other `@` are kept.
    /// Every value but the `trusted` ones (rootfs's own multi-line placeholders) is refused
    /// if it holds a control character: a newline in OS_VERSION or a config.sh value would
    /// add instructions to the Dockerfile.
    public static func render(template: String, values: [String: String], templatePath: String,
                              trusted: Set<String> = []) throws -> String {
        var out = ""
        var rest = Substring(template)
        while let start = rest.firstIndex(of: "@") {
            out += rest[..<start]
            let after = rest.index(after: start)
            if let end = rest[after...].firstIndex(of: "@") {
                let name = String(rest[after..<end])
                if !name.isEmpty, name.allSatisfy({ $0.isUppercase || $0 == "_" || $0.isNumber }) {
                    guard let value = values[name] else {
                        throw RootfsError("\(templatePath): unknown placeholder @\(name)@",
                                          hint: "placeholders are " + values.keys.sorted().map { "@\($0)@" }.joined(separator: ", "))
                    }
                    if !trusted.contains(name) && SettingValue.hasControlCharacter(value) {
                        throw RootfsError("\(templatePath): the value of @\(name)@ holds a control character (newline, tab...): '\(SettingValue.printable(value))'",
                                          hint: "set \(name) (config.sh or the environment) to a value on one line; it is written into the builder's Dockerfile")
                    }
                    out += value
                    rest = rest[rest.index(after: end)...]
                    continue
                }
            }
            out += "@"
            rest = rest[after...]
        }
        out += rest
        return out
    }

    /// The image of the first FROM line (nil when there is none).
    public static func fromImage(of dockerfile: String) -> String? {
        for line in dockerfile.split(separator: "\n") {
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard let first = words.first, first.uppercased() == "FROM" else { continue }
            return words.dropFirst().first(where: { !$0.hasPrefix("--") }).map(String.init)
        }
        return nil
    }

    /// Replaces the image of the first FROM line (keeping `--platform=` and `AS name`).
    public static func replacingFromImage(in dockerfile: String, with image: String) -> String {
        var lines = dockerfile.components(separatedBy: "\n")
        for (i, line) in lines.enumerated() {
            var words = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            guard let first = words.first, first.uppercased() == "FROM" else { continue }
            guard let at = words.indices.dropFirst().first(where: { !words[$0].hasPrefix("--") }) else { continue }
            words[at] = image
            lines[i] = words.joined(separator: " ")
            break
        }
        return lines.joined(separator: "\n")
    }

    /// A tag component: lower case letters, digits, '.', '_' and '-'.
    static func tagSafe(_ s: String) -> String {
        let mapped = s.lowercased().map { c -> Character in
            (c.isLetter && c.isASCII) || c.isNumber || c == "." || c == "_" || c == "-" ? c : "-"
        }
        let text = String(mapped)
        return text.isEmpty ? "latest" : String(text.prefix(64))
    }

    /// Kata's build arguments, passed when the Dockerfile declares them and the caller
    /// set them (Kata reads GO_VERSION and RUST_TOOLCHAIN from its versions.yaml; rootfs
    /// takes them from the environment, else the Dockerfile's own ARG default applies).
    public static let kataBuildArguments = ["IMAGE_REGISTRY", "GO_VERSION", "RUST_TOOLCHAIN"]

    /// The values of Kata's `generate_dockerfile` placeholders (besides @OS_VERSION@).
    /// @INSTALL_RUST@: Kata installs rustup only to compile the agent in the image;
    /// rootfs never compiles the agent (it installs a given binary, --agent or
    /// AGENT_SOURCE_BIN), and rustup is not reachable offline, so it is a comment.
    /// @INSTALL_GO@ likewise. @SET_PROXY@: with http_proxy set, dnf's, yum's and
    /// apt's configuration in the builder image point at it (the value comes from the
    /// http_proxy build argument, never spliced into the Dockerfile); else a comment.
    public static func kataPlaceholders(environment env: [String: String]) -> [String: String] {
        let proxy = nonEmpty(env["http_proxy"]) ?? nonEmpty(env["HTTP_PROXY"])
        let setProxy = proxy == nil ? "# SET_PROXY: no http_proxy in the environment, nothing to configure" : #"""
            RUN for f in /etc/dnf/dnf.conf /etc/yum.conf; do if [ -f "$f" ]; then printf 'proxy=%s\n' "$http_proxy" >> "$f"; fi; done; \
                if [ -d /etc/apt/apt.conf.d ]; then printf 'Acquire::http::Proxy "%s";\n' "$http_proxy" > /etc/apt/apt.conf.d/80rootfs-proxy; fi; true
            """#
        return [
            "INSTALL_RUST": "# INSTALL_RUST: rootfs installs a prebuilt agent (--agent, AGENT_SOURCE_BIN); no Rust toolchain is installed",
            "INSTALL_GO": "# INSTALL_GO: rootfs builds nothing with Go in the builder image; no Go toolchain is installed",
            "SET_PROXY": setProxy,
        ]
    }

    /// The names a Dockerfile declares with ARG.
    static func declaredArguments(_ dockerfile: String) -> Set<String> {
        var names = Set<String>()
        for line in dockerfile.split(separator: "\n") {
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard words.count >= 2, words[0].uppercased() == "ARG" else { continue }
            for word in words.dropFirst() { if let name = word.split(separator: "=", maxSplits: 1).first { names.insert(String(name)) } }
        }
        return names
    }

    /// `${IMAGE_REGISTRY}/debian:12` with the registry filled in: the given one, else
    /// the Dockerfile's `ARG IMAGE_REGISTRY=` default, else docker.io (as in Kata).
    static func resolvingRegistry(_ image: String, registry: String?, dockerfile: String) -> String {
        guard image.contains("$IMAGE_REGISTRY") || image.contains("${IMAGE_REGISTRY}") else { return image }
        var value = registry ?? "docker.io"
        if registry == nil {
            for line in dockerfile.split(separator: "\n") {
                let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
                if words.count >= 2, words[0].uppercased() == "ARG", words[1].hasPrefix("IMAGE_REGISTRY=") {
                    value = String(words[1].dropFirst("IMAGE_REGISTRY=".count))
                }
            }
        }
        return image.replacingOccurrences(of: "${IMAGE_REGISTRY}", with: value).replacingOccurrences(of: "$IMAGE_REGISTRY", with: value)
    }

    /// Renders the distro's Dockerfile.in for the plan. `baseImageID` (when the base is
    /// local) goes into the hash, so a re-seeded base image gives a new builder image.
    public static func make(distro: Distro, osName: String, osVersion: String, architecture: String,
                            configValues: [String: String] = [:], builderBase: String?, registry: String?,
                            environment: [String: String] = [:], platform: String? = nil,
                            baseImageID: (String) async -> String? = { _ in nil }) async throws -> BuilderImage {
        let path = distro.dockerfileTemplatePath
        guard FS.isRegularFile(path) else {
            throw RootfsError("distro '\(distro.name)' has no Dockerfile.in (\(path)), so it cannot be built in a container",
                              hint: "add one (see template/Dockerfile.in), or build on the host (--engine host)")
        }
        let template: String
        do { template = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw RootfsError("cannot read \(path): \(error.localizedDescription)")
        }
        // Any config.sh variable is a placeholder too (Kata-style @INSTALL_...@ values).
        let values = configValues.merging(kataPlaceholders(environment: environment)) { $1 }.merging(["OS_VERSION": osVersion, "OS_NAME": osName, "DISTRO": distro.name,
                                           "ARCH": architecture]) { $1 }
        try SettingValue.validateProxies(environment)
        var dockerfile = try render(template: template, values: values, templatePath: path,
                                    trusted: Set(kataPlaceholders(environment: [:]).keys))
        guard let original = fromImage(of: dockerfile) else {
            throw RootfsError("\(path) has no FROM line", hint: "start it with FROM <image> (e.g. FROM @OS_NAME@:@OS_VERSION@)")
        }
        var base = original
        var arguments: [String: String] = [:]
        let declared = declaredArguments(dockerfile)
        for name in kataBuildArguments where declared.contains(name) {
            if let value = nonEmpty(environment[name]) { arguments[name] = value }
        }
        if let builderBase = nonEmpty(builderBase) {
            base = builderBase
        } else if original.contains("IMAGE_REGISTRY") {
            // Kata's form, `FROM ${IMAGE_REGISTRY}/debian:...`: the registry is a build argument.
            if let registry = nonEmpty(registry) { arguments["IMAGE_REGISTRY"] = registry }
        } else if let registry = nonEmpty(registry) {
            base = registry.hasSuffix("/") ? registry + original : registry + "/" + original
        }
        if base != original { dockerfile = replacingFromImage(in: dockerfile, with: base) }
        base = resolvingRegistry(base, registry: arguments["IMAGE_REGISTRY"], dockerfile: dockerfile)

        var hasher = SHA256()
        hasher.update(Array("rootfs-builder-image-v1\n".utf8))
        hasher.update(Array(dockerfile.utf8))
        for file in try contextFiles(distro.directory) {
            hasher.update(Array("\0\(file)\0".utf8))
            hasher.update(Array(try SHA256.hexDigest(ofFile: distro.directory + "/" + file).utf8))
        }
        for key in arguments.keys.sorted() { hasher.update(Array("\0arg\0\(key)=\(arguments[key]!)".utf8)) }
        if let id = await baseImageID(base) { hasher.update(Array("\0base\0\(id)".utf8)) }
        // The same Dockerfile for another platform is another image: an arm64 builder must not
        // be taken for the amd64 one (and the tag says which it is).
        if let platform { hasher.update(Array("\0platform\0\(platform)".utf8)) }
        let hash = SHA256.hex(hasher.finalize())
        let platformPart = platform.map { tagSafe(OCIArchitecture.name(String($0.split(separator: "/").last ?? ""))) + "-" } ?? ""
        let tag = "rootfs-builder-\(tagSafe(distro.name)):\(tagSafe(osVersion))-\(platformPart)\(hash.prefix(16))"
        var image = BuilderImage(dockerfile: dockerfile, baseImage: base, context: distro.directory,
                                 templatePath: path, inputsHash: hash, tag: tag, buildArguments: arguments)
        image.platform = platform
        return image
    }

    /// The context's files (relative, sorted), without the ones mounted at run time.
    static func contextFiles(_ root: String) throws -> [String] {
        guard let all = FileManager.default.enumerator(atPath: root) else { return [] }
        var files: [String] = []
        while let rel = all.nextObject() as? String {
            if nonInputs.contains(rel) { continue }
            if FS.isRegularFile(root + "/" + rel) { files.append(rel) }
        }
        return files.sorted()
    }

    /// The `Step 2/3 : RUN ...` line (classic Docker), `STEP 2/3: RUN ...` (Podman,
    /// Buildah) or `#6 [2/3] RUN ...` (BuildKit) that was running last.
    public static func failingStep(in lines: [String]) -> String? {
        var last: String?
        for raw in lines {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("Step "), let colon = line.range(of: " : ") {
                last = "step \(line.dropFirst(5)[..<colon.lowerBound]): \(line[colon.upperBound...])"
            } else if line.hasPrefix("STEP "), let colon = line.range(of: ": ") {
                last = "step \(line.dropFirst(5)[..<colon.lowerBound]): \(line[colon.upperBound...])"
            } else if line.hasPrefix("#"), let open = line.firstIndex(of: "["), let close = line.firstIndex(of: "]"),
                      open < close
            {
                let inside = line[line.index(after: open)..<close].split(separator: " ").last.map(String.init) ?? ""
                if inside.contains("/") { last = "step \(inside): \(line[line.index(after: close)...].trimmingCharacters(in: .whitespaces))" }
            }
        }
        return last
    }
}
