"""The pipeline's stages (teacher, distill, export, profile) and what runs them: each reads
the stages before it through return values and files in the run directory."""
