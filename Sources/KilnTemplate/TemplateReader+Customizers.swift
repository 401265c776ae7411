import KilnSupport

/// Customizers and in-VM validations: their types, scripts, checksums and names.
extension TemplateReader {
    enum CustomizerKind: String, CaseIterable {
        case shell = "Shell", powerShell = "PowerShell", file = "File"
        case windowsRestart = "WindowsRestart", windowsUpdate = "WindowsUpdate"
    }

    func readCustomizers(_ parent: ObjectReader, key: String, allowed: [CustomizerKind]) -> [(path: TemplatePath, step: Customizer)] {
        guard let items = parent.array(key, expected: "an array of customizers") else { return [] }
        var steps: [(path: TemplatePath, step: Customizer)] = []
        var namesSeen: [String: Int] = [:]
        for (index, item) in items.enumerated() {
            let path = parent.path(key).appending(index: index)
            guard let step = ObjectReader(item, at: path, sink: sink, expected: "a customizer object") else { continue }
            // A name is optional and may be empty; a repeated one is accepted, as the service accepts it (its own
            // Windows REST example, CreateImageTemplateWindows.json in azure-rest-api-specs, repeats one). Build logs
            // then show the step by place and type (LoadedTemplate.stepLabels).
            if let name = step.string("name", allowEmpty: true), !name.isEmpty {
                if let first = namesSeen[name.lowercased()] {
                    sink.warning(step.path("name"), "\"\(name)\" is also the name of \(parent.path(key))[\(first)]; accepted, and build logs show this step as \(key)[\(index)]", at: step.value("name"))
                } else {
                    namesSeen[name.lowercased()] = index
                }
            }
            if let customizer = readCustomizer(step, allowed: allowed) { steps.append((path, customizer)) }
            step.reportUnknown()
        }
        return steps
    }

    func readCustomizer(_ step: ObjectReader, allowed: [CustomizerKind]) -> Customizer? {
        guard let typeText = step.string("type", required: true, expected: "a customizer type (\(allowed.map(\.rawValue).joined(separator: ", ")))") else { return nil }
        guard let kind = allowed.first(where: { $0.rawValue.caseInsensitiveEquals(typeText) }) else {
            let known = CustomizerKind.allCases.contains { $0.rawValue.caseInsensitiveEquals(typeText) }
            let list = allowed.map(\.rawValue).joined(separator: ", ")
            sink.error(step.path("type"), known ? "expected one of \(list) here, found \"\(typeText)\"" : "expected a customizer type (\(list)), found \"\(typeText)\"", at: step.value("type"))
            return nil
        }
        sink.caseMismatch(step.path("type"), written: typeText, canonical: kind.rawValue, what: "values")
        let name = step.value("name")?.stringValue
        switch kind {
        case .shell:
            guard let script = readScript(step) else { return nil }
            return .shell(ShellCustomizer(name: name, script: script, sha256Checksum: readChecksum(step, script: script)))
        case .powerShell:
            let script = readScript(step)
            let checksum = script.flatMap { readChecksum(step, script: $0) }
            let elevated = step.bool("runElevated") ?? false
            let system = step.bool("runAsSystem") ?? false
            if system && !elevated {
                sink.error(step.path("runAsSystem"), "expected runElevated: true alongside runAsSystem: true, found runElevated \(step.has("runElevated") ? "false" : "not set")", at: step.value("runAsSystem"))
            }
            var codes = [0]
            if let items = step.array("validExitCodes", expected: "an array of integer exit codes") {
                codes = items.enumerated().compactMap { index, item in
                    ObjectReader.integer(item, at: step.path("validExitCodes").appending(index: index), sink: sink, expected: "an integer exit code")
                }
                if items.isEmpty { codes = [0] }
            }
            guard let script else { return nil }
            return .powerShell(PowerShellCustomizer(name: name, script: script, sha256Checksum: checksum, runElevated: elevated,
                                                    runAsSystem: system, validExitCodes: codes))
        case .file:
            let source = step.string("sourceUri", required: true, expected: "an http, https or file URI")
            if let source { checkURI(source, at: step.path("sourceUri"), node: step.value("sourceUri")) }
            let destination = step.string("destination", required: true, expected: "a path in the guest")
            let checksum = readChecksumValue(step)
            guard let source, let destination else { return nil }
            return .file(FileCustomizer(name: name, sourceUri: source, destination: destination, sha256Checksum: checksum))
        case .windowsRestart:
            // '' is the API's documented default for both (the 2020-02-14 types: "restartCheckCommand: Command to
            // check if restart succeeded [Default: '']"), and the AVD portal's custom image template export writes it.
            var command = step.string("restartCommand", allowEmpty: true) ?? ""
            if command.trimmingSpaces.isEmpty { command = WindowsRestartCustomizer.defaultRestartCommand }
            let check = step.string("restartCheckCommand", allowEmpty: true).flatMap { $0.trimmingSpaces.isEmpty ? nil : $0 }
            let timeoutText = step.string("restartTimeout") ?? WindowsRestartCustomizer.defaultRestartTimeout
            guard let timeout = DurationText.parse(timeoutText), timeout > .zero else {
                sink.error(step.path("restartTimeout"), "expected a duration such as \"5m\", \"90s\" or \"2h\" (a number with unit s, m or h), found \"\(timeoutText)\"", at: step.value("restartTimeout"))
                return nil
            }
            return .windowsRestart(WindowsRestartCustomizer(name: name, restartCommand: command, restartCheckCommand: check,
                                                            restartTimeout: timeoutText, restartTimeoutDuration: timeout))
        case .windowsUpdate:
            // Empty criteria and an updateLimit of 0 mean the defaults, as the API specification says.
            var criteria = step.string("searchCriteria", allowEmpty: true) ?? ""
            if criteria.trimmingSpaces.isEmpty { criteria = WindowsUpdateCustomizer.defaultSearchCriteria }
            var filters = WindowsUpdateCustomizer.defaultFilters
            if let given = step.stringArray("filters") {
                for (index, filter) in given.enumerated() {
                    checkUpdateFilter(filter, at: step.path("filters").appending(index: index))
                }
                if !given.isEmpty { filters = given }
            }
            var limit = WindowsUpdateCustomizer.defaultUpdateLimit
            if let value = step.int("updateLimit", expected: "an integer of 0 (the default, \(limit)) or more") {
                if value < 0 {
                    sink.error(step.path("updateLimit"), "expected a positive integer (or 0 for the default, \(limit)), found \(value)", at: step.value("updateLimit"))
                } else if value > 0 {
                    limit = value
                }
            }
            return .windowsUpdate(WindowsUpdateCustomizer(name: name, searchCriteria: criteria, filters: filters, updateLimit: limit))
        }
    }

    /// rgl/packer-plugin-windows-update's windows-update.ps1 (what AIB runs) splits each filter at its first ':'
    /// into an action and a PowerShell expression, includes an update on the first filter that matches when its
    /// action is `include`, and skips it otherwise. A filter without ':' (`$_.BrowseOnly`) has the whole text as
    /// its action and an empty expression, so it matches nothing; an unknown action excludes what it matches.
    /// Kiln's Windows Update step does the same (WindowsScripts.windowsUpdate); validate says so.
    func checkUpdateFilter(_ filter: String, at path: TemplatePath) {
        guard let colon = filter.firstIndex(of: ":") else {
            sink.warning(path, "\"\(filter)\" has no include: or exclude: action; the Windows Update step (as rgl/packer-plugin-windows-update) treats it as matching no update. Write \"include:\(filter)\" to select updates with it")
            return
        }
        let action = filter[..<colon].trimmingCharacters().lowercased()
        let expression = filter[filter.index(after: colon)...].trimmingCharacters()
        if action != "include" && action != "exclude" {
            sink.warning(path, "\"\(filter)\": the action \"\(action)\" is neither include nor exclude; an update the expression matches is skipped, as rgl/packer-plugin-windows-update does")
        } else if expression.isEmpty {
            sink.warning(path, "\"\(filter)\" has an empty expression, which matches no update")
        }
    }

    /// Exactly one of scriptUri and inline.
    func readScript(_ step: ObjectReader) -> ScriptSource? {
        let hasURI = step.has("scriptUri")
        let hasInline = step.has("inline")
        if hasURI == hasInline {
            sink.error(step.path, hasURI ? "expected exactly one of scriptUri and inline, found both"
                                         : "expected exactly one of scriptUri and inline, found neither", at: step.node)
            return nil
        }
        if hasURI {
            guard let uri = step.string("scriptUri", expected: "an http, https or file URI") else { return nil }
            checkURI(uri, at: step.path("scriptUri"), node: step.value("scriptUri"))
            return .scriptUri(uri)
        }
        guard let node = step.value("inline") else { return nil }
        switch node.value {
        case .string(let line):
            return .inline([line])
        case .array:
            guard let lines = step.stringArray("inline", expected: "a string or an array of strings") else { return nil }
            if lines.isEmpty {
                sink.error(step.path("inline"), "expected at least one command, found an empty array", at: node)
            }
            return .inline(lines)
        default:
            sink.error(step.path("inline"), "expected a string or an array of strings, found \(node.summary)", at: node)
            return nil
        }
    }

    func readChecksum(_ step: ObjectReader, script: ScriptSource) -> String? {
        let checksum = readChecksumValue(step)
        if checksum != nil, case .inline = script {
            sink.warning(step.path("sha256Checksum"), "applies to scriptUri; ignored for inline commands")
        }
        return checksum
    }

    func readChecksumValue(_ step: ObjectReader) -> String? {
        // An empty checksum means "no checksum", as the API specification's default is "".
        guard let sum = step.string("sha256Checksum", allowEmpty: true, expected: "64 hexadecimal digits"), !sum.isEmpty else { return nil }
        guard sum.count == 64, sum.allSatisfy(\.isHexDigit), sum.allSatisfy(\.isASCII) else {
            sink.error(step.path("sha256Checksum"), "expected 64 hexadecimal digits, found \"\(sum)\" (\(sum.count) characters)", at: step.value("sha256Checksum"))
            return nil
        }
        return sum.lowercased()
    }

    func checkURI(_ uri: String, at path: TemplatePath, node: JSONNode?) {
        let lower = uri.lowercased()
        let schemeOK = ["https://", "http://", "file://"].contains { lower.hasPrefix($0) && lower.count > $0.count }
        if !schemeOK {
            sink.error(path, "expected an http, https or file URI, found \"\(uri)\"", at: node)
        } else if uri.contains("<") && uri.contains(">") {
            sink.warning(path, "looks like an unreplaced placeholder: \"\(uri)\"")
        }
    }
}
