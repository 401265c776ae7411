import ArgumentParser

/// `--parameter key=value`, repeatable: values for an ARM deployment template's parameters.
struct ParameterOptions: ParsableArguments {
    @Option(name: .customLong("parameter"), help: ArgumentHelp("Set an ARM template parameter (repeatable).", valueName: "key=value"))
    var rawParameters: [String] = []

    var parameters: [String: String] {
        var values: [String: String] = [:]
        for item in rawParameters {
            guard let equals = item.firstIndex(of: "=") else { continue }
            values[String(item[..<equals])] = String(item[item.index(after: equals)...])
        }
        return values
    }

    func validate() throws {
        for item in rawParameters {
            guard let equals = item.firstIndex(of: "="), equals != item.startIndex else {
                throw ValidationError("--parameter expects key=value, found \"\(item)\"")
            }
        }
    }
}
